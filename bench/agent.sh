#!/usr/bin/env bash
# Failover by path with Lifeboat's agents coordinated through etcd (default settings: 3 s
# lease, renewed every second), measured as a client sees it with ../shared/harness: a writer
# opens a new connection per INSERT every 20 ms through libpq's multi-host DSN
# (target_session_attrs=read-write: the agents have no traffic endpoint yet), and
# check_writes.py counts lost acknowledged writes and primaries after the fault.
#   sync kill-primary                   PostgreSQL crashed, its agent alive (it resigns at once)
#   sync kill-primary + its agent       the whole node lost (the lease must run out)
#   sync stop-primary                   the primary frozen (SIGSTOP), its agent alive
# Usage: bench/agent.sh [TRIALS=10]   (as root; etcd from Debian's etcd-server)
set -euo pipefail
trials=${1:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
H=$(cd "$here/../shared/harness" && pwd)
out=$here/bench/results/agent-$(date -u +%F).txt
mkdir -p "$here/bench/results"
dpkg-query -W -f='${Status}' python3-psycopg2 2>/dev/null | grep -q 'ok installed' \
  || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-psycopg2 >/dev/null; }
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null 2>&1
orch="$here/bench/lifeboat-agents.sh"
pair=/tmp/lifeboat-bench-agents
dsn="host=127.0.0.1,127.0.0.1 port=5433,5434 dbname=postgres user=postgres password=harness-super-pw target_session_attrs=read-write"
echo "# bench/agent.sh $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $("$here/target/release/lifeboat" --version); $(etcd --version 2>/dev/null | head -1)" | tee "$out"

run() {  # fault label trials [pre-fault]
  "$orch" down "$pair" || true
  [ -e "$pair/pair.env" ] && "$H/pg-pair.sh" down "$pair" >/dev/null 2>&1 || true
  rm -rf "$pair"
  "$H/pg-pair.sh" up "$pair" --sync >/dev/null
  echo "## lifeboat agents sync $2 ($3 trials)" | tee -a "$out"
  local pre=()
  [ -n "${4:-}" ] && pre=(--pre-fault "$4")
  LOGS="/tmp/lifeboat-bench-agents-$2/logs" "$H/trial.sh" --dir "$pair" --endpoint-dsn "$dsn" \
    --fault "$1" --trials "$3" "${pre[@]}" \
    --orchestrator-up "$orch up $pair" --orchestrator-down "$orch down $pair" \
    --work "/tmp/lifeboat-bench-agents-$2" 2>&1 | grep --line-buffered -E '^trial=|^SUMMARY|LOST' | tee -a "$out" || true
  "$orch" down "$pair" || true
  "$H/pg-pair.sh" down "$pair" >/dev/null 2>&1 || true
}

run kill-primary postgres-crashed "$trials"
run kill-primary node-lost "$trials" "$orch kill-primary-agent $pair"
run stop-primary primary-frozen "$trials"
echo "results: $out"

#!/usr/bin/env bash
# Failover by path with Lifeboat's agents coordinated through etcd (default settings: 3 s
# lease, renewed every 500 ms, 1 s margin), measured as a client sees it with
# ../shared/harness: a writer opens a new connection per INSERT every 20 ms, and
# check_writes.py counts lost acknowledged writes and primaries after the fault.
#   sync kill-primary                   PostgreSQL crashed, its agent alive (it resigns at once)
#   sync kill-primary + its agent       the whole node lost (the lease must run out)
#   sync stop-primary                   the primary frozen (SIGSTOP), its agent alive
# The client's path (VIA):
#   endpoints   (default) each site's traffic endpoint, run by its agent
#               (`failover.site_listen`), listed in one libpq DSN: east's first, west's second
#   multihost   libpq's multi-host DSN over the servers themselves
# Both with target_session_attrs=read-write and connect_timeout=1.
# PATRONI=N also runs ../shared/anchors/patroni-failover.sh N N in the same run (N trials with
# Patroni's default and N with its aggressive timing; the whole node lost, its Patroni and
# postmaster killed together) into the same results file.
# Usage: [VIA=endpoints|multihost] [PATRONI=N] bench/agent.sh [TRIALS=10]
#        (as root; etcd from Debian's etcd-server)
set -euo pipefail
trials=${1:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
H=$(cd "$here/../shared/harness" && pwd)
out=$here/bench/results/agent-$(date -u +%F).txt
mkdir -p "$here/bench/results"
. "$here/bench/lib/deps.sh"
need_deb python3-psycopg2
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null 2>&1
orch="$here/bench/lifeboat-agents.sh"
pair=/tmp/lifeboat-bench-agents
via=${VIA:-endpoints}
case "$via" in
  endpoints) export SITE_PORTS=6441,6442; ports=6441,6442 ;;
  multihost) unset SITE_PORTS; ports=5433,5434 ;;
  *) echo "VIA is endpoints or multihost" >&2; exit 2 ;;
esac
dsn="host=127.0.0.1,127.0.0.1 port=$ports dbname=postgres user=postgres password=harness-super-pw target_session_attrs=read-write connect_timeout=1"
echo "# bench/agent.sh $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $("$here/target/release/lifeboat" --version); $(etcd --version 2>/dev/null | head -1); via=$via" | tee -a "$out"

run() {  # fault label trials [pre-fault]
  "$orch" down "$pair" || true
  [ -e "$pair/pair.env" ] && "$H/pg-pair.sh" down "$pair" >/dev/null 2>&1 || true
  rm -rf "$pair"
  "$H/pg-pair.sh" up "$pair" --sync >/dev/null
  echo "## lifeboat agents sync $2 via $via ($3 trials)" | tee -a "$out"
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
if [ "${PATRONI:-0}" -gt 0 ]; then
  echo "## patroni $(patroni --version 2>/dev/null) node lost, defaults then aggressive ($PATRONI trials each)" | tee -a "$out"
  pr=$(mktemp)
  RESULTS=$pr "$here/../shared/anchors/patroni-failover.sh" "$PATRONI" "$PATRONI" > "$pr.log" 2>&1 \
    || { echo "patroni-failover.sh exited non-zero; the trials it finished follow" | tee -a "$out"
         echo "its log: $pr.log" >&2; }
  cat "$pr" "$pr.partial" 2>/dev/null | tee -a "$out" || true
fi
echo "results: $out"

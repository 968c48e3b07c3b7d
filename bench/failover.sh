#!/usr/bin/env bash
# Failover as a client sees it: Lifeboat (`lifeboat serve`, default settings) vs Patroni 3.0.2
# with etcd (the anchor, ../shared/anchors/patroni-failover.sh: default and aggressive timing),
# in one run on this machine. Lifeboat is measured with ../shared/harness (pg-pair.sh builds a
# primary/standby pair, writer.py opens a new connection per INSERT through the endpoint every
# 20 ms, check_writes.py counts lost acknowledged writes and primaries after the fault):
#   sync  kill-primary   (kill -9 of the primary's postmaster)
#   async kill-primary
#   sync  stop-primary   (SIGSTOP of the postmaster and all its children: a hung node)
#   sync  stall-primary:0.75  (frozen for half the detection window: must not fail over)
# Then the daemon's idle RSS and CPU over 60 s, then the Patroni anchor.
# Usage: bench/failover.sh [TRIALS=20] [PATRONI_TRIALS=TRIALS] [STALL_TRIALS=10]   (as root)
set -euo pipefail
trials=${1:-20}
ptrials=${2:-$trials}
strials=${3:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
shared=$(cd "$here/../shared" && pwd)
H=$shared/harness
day=$(date -u +%F)
out=$here/bench/results/failover-$day.txt
mkdir -p "$here/bench/results"
. "$here/bench/lib/deps.sh"
need_deb python3-psycopg2
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null 2>&1
orch="$here/bench/lifeboat-orchestrator.sh"
pair=/tmp/lifeboat-bench-pair
dsn="host=127.0.0.1 port=6432 dbname=postgres user=postgres password=harness-super-pw"
{
  echo "# bench/failover.sh $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $("$here/target/release/lifeboat" --version)"
} | tee "$out"

run_lb() {  # mode fault trials label
  "$orch" down "$pair" || true
  [ -e "$pair/pair.env" ] && "$H/pg-pair.sh" down "$pair" >/dev/null 2>&1 || true
  rm -rf "$pair" "$pair.lifeboat"
  "$H/pg-pair.sh" up "$pair" "--$1" >/dev/null
  echo "## lifeboat $1 $2 ($3 trials)" | tee -a "$out"
  LOGS="/tmp/lifeboat-bench-$4/daemon-logs" "$H/trial.sh" --dir "$pair" --endpoint-dsn "$dsn" \
    --fault "$2" --trials "$3" \
    --orchestrator-up "$orch up $pair" --orchestrator-down "$orch down $pair" \
    --work "/tmp/lifeboat-bench-$4" 2>&1 | grep --line-buffered -E '^trial=|^SUMMARY|LOST' | tee -a "$out" || true
  "$orch" down "$pair" || true
  "$H/pg-pair.sh" down "$pair" >/dev/null 2>&1 || true
}

run_lb sync kill-primary "$trials" sync-kill
run_lb async kill-primary "$trials" async-kill
run_lb sync stop-primary "$trials" sync-stop
run_lb sync stall-primary:0.75 "$strials" sync-stall

# Idle cost of the daemon watching one pair (checks every 500 ms).
rm -rf "$pair" "$pair.lifeboat"
"$H/pg-pair.sh" up "$pair" --sync >/dev/null
"$orch" up "$pair"
pid=$(cat "$pair.lifeboat/pid")
sleep 5
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(ticks); sleep 60; t1=$(ticks)
rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
cpu=$(echo "scale=2; ($t1 - $t0) * 100 / $(getconf CLK_TCK) / 60" | bc)
echo "## lifeboat idle: RSS ${rss} kB, CPU ${cpu}% of one core over 60 s" | tee -a "$out"
"$orch" down "$pair"
"$H/pg-pair.sh" down "$pair" >/dev/null

echo "## patroni anchor ($ptrials trials each)" | tee -a "$out"
# Its whole output is kept (a failed run says why there), its summary lines go to $out.
RESULTS="$here/bench/results/patroni-$day.txt" bash "$shared/anchors/patroni-failover.sh" "$ptrials" "$ptrials" \
  > "$here/bench/results/patroni-$day.log" 2>&1 || echo "## patroni anchor FAILED: see bench/results/patroni-$day.log" | tee -a "$out"
grep -iE 'median|p95|versions|failed' "$here/bench/results/patroni-$day.log" | tee -a "$out" || true
echo "# raw: $out, bench/results/patroni-$day.txt, /tmp/lifeboat-bench-*/" | tee -a "$out"

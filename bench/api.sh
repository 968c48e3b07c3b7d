#!/usr/bin/env bash
# GET /api/v1/status under load, and whether the failover checks keep their interval. On a
# synchronous lab (`lifeboat lab up`: a primary and a synchronous standby, the daemon with
# default settings: a check every 500 ms, the API and dashboard on their own address), two
# phases of SECS seconds each:
#   idle    — nothing but the daemon;
#   status  — `wrk -t2 -c16` on /api/v1/status with the lab's token (bounded load: 16
#             connections, no pipelining). Each request reads the evidence log, the failover
#             state and the schedules, and builds every service's view.
# The daemon runs with LIFEBOAT_LOG_EVERY_CHECK=1: a log line per check; the time between
# consecutive checks (p50/p99, the share within 10% of 500 ms) and how late each started come
# from it; wrk gives requests/s and the latency percentiles.
# Usage: bench/api.sh [SECS=30]   (needs wrk)
set -euo pipefail
secs=${1:-30}
here=$(cd "$(dirname "$0")/.." && pwd)
day=$(date -u +%F)
out=$here/bench/results/api-$day.txt
mkdir -p "$here/bench/results"
command -v wrk >/dev/null || { echo "wrk is not installed (Debian: wrk)" >&2; exit 1; }
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null 2>&1
lb=$here/target/release/lifeboat
lab=/tmp/lifeboat-bench-api
"$lb" lab down --dir "$lab" >/dev/null 2>&1 || true
trap '"$lb" lab down --dir "$lab" >/dev/null 2>&1 || true' EXIT
LIFEBOAT_LOG_EVERY_CHECK=1 "$lb" lab up --dir "$lab" >/dev/null
addr=$(python3 -c "import json; print(json.load(open('$lab/lab.json'))['api'])")
token=$(cat "$lab/api.token")
sleep 3
# A few backups, so the status has history to read.
for _ in 1 2 3; do "$lb" --plan "$lab/lifeboat.yaml" backup db-base >/dev/null 2>&1 || true; done
intervals() {
  python3 "$here/bench/lib/check-intervals.py" "$lab/daemon.log" "$1" "$2"
}
{
  echo "# bench/api.sh $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $("$lb" --version); secs=$secs"
  echo "## status document"
  echo "  $(curl -s -H "Authorization: Bearer $token" "http://$addr/api/v1/status" | wc -c) bytes; evidence log: $("$lb" --plan "$lab/lifeboat.yaml" --json audit list | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') events"
  echo "## idle"
  a=$(date +%s.%N); sleep "$secs"; b=$(date +%s.%N)
  intervals "$a" "$b"
  echo "## status (wrk -t2 -c16 -d${secs}s on /api/v1/status)"
  a=$(date +%s.%N)
  wrk -t2 -c16 -d"${secs}s" --latency -H "Authorization: Bearer $token" "http://$addr/api/v1/status" | sed 's/^/  /'
  b=$(date +%s.%N)
  intervals "$a" "$b"
  echo "## a wrong token under the same load (401s: the cost of refusing)"
  wrk -t2 -c16 -d10s --latency -H "Authorization: Bearer lbt_wrong" "http://$addr/api/v1/status" | sed 's/^/  /' | grep -E "Requests/sec|99%|Non-2xx"
} 2>&1 | tee "$out"
echo "results: $out"

#!/usr/bin/env bash
# /metrics under load, and whether the failover checks keep their interval. On a synchronous
# lab (`lifeboat lab up`: a primary and a synchronous standby, the daemon with default settings:
# a check every 500 ms), three phases of SECS seconds each:
#   idle    — nothing but the daemon;
#   backup  — `lifeboat backup db-base` back to back (base backups of the primary);
#   scrape  — `wrk -t2 -c16` on /metrics (bounded load: 16 connections, no pipelining).
# The daemon runs with LIFEBOAT_LOG_EVERY_CHECK=1: a log line per check. The time between
# consecutive checks (p50/p99, and the share within 10% of 500 ms) and how late each started
# against its schedule come from that log; wrk gives requests/s and the latency percentiles.
# Usage: bench/metrics.sh [SECS=30]   (needs wrk)
set -euo pipefail
secs=${1:-30}
here=$(cd "$(dirname "$0")/.." && pwd)
day=$(date -u +%F)
out=$here/bench/results/metrics-$day.txt
mkdir -p "$here/bench/results"
command -v wrk >/dev/null || { echo "wrk is not installed (Debian: wrk)" >&2; exit 1; }
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null 2>&1
lb=$here/target/release/lifeboat
lab=/tmp/lifeboat-bench-metrics
"$lb" lab down --dir "$lab" >/dev/null 2>&1 || true
trap '"$lb" lab down --dir "$lab" >/dev/null 2>&1 || true' EXIT
# The daemon logs every check with how late it started.
LIFEBOAT_LOG_EVERY_CHECK=1 "$lb" lab up --dir "$lab" >/dev/null
addr=$(python3 -c "import json; print(json.load(open('$lab/lab.json'))['metrics'])")
sleep 3
# Intervals between the daemon's decisions for db whose time falls in [from, to) (epoch s).
intervals() {
  python3 "$here/bench/lib/check-intervals.py" "$lab/daemon.log" "$1" "$2"
}
{
  echo "# bench/metrics.sh $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $("$lb" --version); secs=$secs"
  echo "## idle"
  a=$(date +%s.%N); sleep "$secs"; b=$(date +%s.%N)
  intervals "$a" "$b"
  echo "## backup (lifeboat backup db-base, back to back)"
  a=$(date +%s.%N)
  n=0
  while [ "$(echo "$(date +%s.%N) - $a < $secs" | bc)" = 1 ]; do
    "$lb" --plan "$lab/lifeboat.yaml" backup db-base >/dev/null 2>&1 && n=$((n + 1))
  done
  b=$(date +%s.%N)
  echo "  $n base backups"
  intervals "$a" "$b"
  echo "## scrape (wrk -t2 -c16 -d${secs}s on /metrics)"
  a=$(date +%s.%N)
  wrk -t2 -c16 -d"${secs}s" --latency "http://$addr/metrics" | sed 's/^/  /'
  b=$(date +%s.%N)
  intervals "$a" "$b"
  echo "## /metrics size"
  echo "  $(curl -s "http://$addr/metrics" | wc -c) bytes, $(curl -s "http://$addr/metrics" | grep -vc '^#') samples"
} 2>&1 | tee "$out"
echo "results: $out"

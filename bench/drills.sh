#!/usr/bin/env bash
# Drills as the chaos suite: `lifeboat drill run SCENARIO --trials N --seed S` against a
# synchronous lab (`lifeboat lab up`: a primary and a synchronous standby of one PostgreSQL
# cluster on this machine, the daemon with default settings, writers opening a new connection
# per write through its endpoint every 20 ms), for kill-primary, hang-primary and
# partition-site (nftables, so as root); then the wall time of `lifeboat demo`.
# The fault lands between 1 and 3 s into each trial (seeded); every trial is a full drill
# with its own report and evidence event, and the service is made whole between trials.
# Usage: bench/drills.sh [TRIALS=20] [SEED=20261202]   (as root)
set -euo pipefail
trials=${1:-20}
seed=${2:-20261202}
here=$(cd "$(dirname "$0")/.." && pwd)
day=$(date -u +%F)
out=$here/bench/results/drills-$day.txt
mkdir -p "$here/bench/results"
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null 2>&1
lb=$here/target/release/lifeboat
lab=/tmp/lifeboat-bench-lab
"$lb" lab down --dir "$lab" >/dev/null 2>&1 || true
trap '"$lb" lab down --dir "$lab" >/dev/null 2>&1 || true' EXIT
{
  echo "# bench/drills.sh $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $("$lb" --version); trials=$trials seed=$seed"
  "$lb" lab up --dir "$lab"
  for s in kill-primary hang-primary partition-site; do
    echo "## $s"
    "$lb" --plan "$lab/lifeboat.yaml" drill run "$s" --trials "$trials" --seed "$seed" || true
  done
  "$lb" lab down --dir "$lab"
  echo "## demo"
  demo=$(mktemp -d)
  chmod 755 "$demo"
  start=$(date +%s.%N)
  (cd "$demo" && "$lb" demo --dir "$demo/run" >/dev/null)
  end=$(date +%s.%N)
  echo "demo wall time: $(echo "$end - $start" | bc) s"
  rm -rf "$demo"
} 2>&1 | tee "$out"
echo "results: $out"

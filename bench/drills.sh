#!/usr/bin/env bash
# Drills as the chaos suite: `lifeboat drill run SCENARIO --trials N --seed S` against a
# synchronous lab (`lifeboat lab up` as root: a primary and a synchronous standby of one
# PostgreSQL cluster, each site in its own network namespace, the daemon with default
# settings; two writers through its endpoint and two through the DNS name, each opening a new
# connection per write every 20 ms), for kill-primary, hang-primary and partition-site (its
# shape drawn per trial: isolate, one-way, or both sites cut off from the coordinator), then
# lose-region (TRIALS/2 trials); then the wall time of `lifeboat demo`.
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
trap '"$lb" lab down --dir "$lab" >/dev/null 2>&1 || true; rm -f "$lab.trials" "$lab.shapes"' EXIT
{
  echo "# bench/drills.sh $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $("$lb" --version); trials=$trials seed=$seed"
  "$lb" lab up --dir "$lab"
  for s in kill-primary hang-primary partition-site; do
    echo "## $s"
    "$lb" --plan "$lab/lifeboat.yaml" drill run "$s" --trials "$trials" --seed "$seed" || true
  done | tee "$lab.trials"
  echo "## partition-site by shape (RTO p50, max in ms)"
  # "trial N: passed (shape) fault after X ms  RTO Y ms ..." -> "shape Y", then per shape.
  awk '/^## partition-site/ { on = 1; next } /^## / { on = 0 }
       on && / trial / { o = index($0, "("); c = index($0, ")"); if (o == 0) next
                         shape = substr($0, o + 1, c - o - 1)
                         for (i = 1; i <= NF; i++) if ($i == "RTO") print shape, $(i + 1) }' \
    "$lab.trials" > "$lab.shapes"
  for shape in $(cut -d' ' -f1 "$lab.shapes" | sort -u); do
    grep "^$shape " "$lab.shapes" | cut -d' ' -f2 | sort -n |
      awk -v s="$shape" '{ a[NR] = $1 } END { printf "  %-12s %2d trials  RTO p50 %s ms  max %s ms\n", s, NR, a[int((NR + 1) / 2)], a[NR] }'
  done
  echo "## lose-region"
  "$lb" --plan "$lab/lifeboat.yaml" drill run lose-region --trials "$((trials / 2))" --seed "$seed" || true
  "$lb" lab down --dir "$lab"
  echo "## demo"
  demo=$(mktemp -d)
  chmod 755 "$demo"
  start=$(date +%s.%N)
  (cd "$demo" && "$lb" demo --dir "$demo/run" >/dev/null)
  end=$(date +%s.%N)
  echo "demo wall time: $(echo "$end - $start" | bc) s"
  rm -rf "$demo"
} 2>&1 | sed -u "s|$lab|LAB_DIR|g" | tee "$out"
echo "results: $out"

#!/usr/bin/env bash
# The partition suite, randomized: seeded random faults, one after another on one three-site
# lab with agents (`lifeboat lab up --agents`: east, west and a witness, each a network
# namespace with its etcd member and traffic endpoint). Each trial draws a fault — the
# primary's PostgreSQL killed or frozen, its site cut off or sending nothing, the witness site
# cut off, the primary site's etcd member or agent killed — holds it 2-8 s, heals it and waits
# until the service is whole again. A writer on every site writes through its own site's
# endpoint and directly to each server; at the end every acknowledged write is looked for on
# the final primary (lost writes) and the servers' own clocks order who took writes when
# (split-brain windows: a server taking writes after another had begun to). Goals: 0 and 0.
# The deterministic set (each fault once) runs in CI: tests/partitions.rs. It counts, it does
# not time: the debug build of the tests is used.
# Usage: bench/partitions.sh [TRIALS=100] [SEED=date]   (as root; etcd from etcd-server)
set -euo pipefail
trials=${1:-100}
seed=${2:-$(date +%s)}
here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/bench/results/partitions-$(date -u +%F).txt
report=$(mktemp)
mkdir -p "$here/bench/results"
echo "# bench/partitions.sh $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(etcd --version 2>/dev/null | head -1); trials=$trials seed=$seed" | tee -a "$out"
start=$(date +%s)
rc=0
LIFEBOAT_PARTITION_TRIALS=$trials LIFEBOAT_PARTITION_SEED=$seed LIFEBOAT_PARTITION_REPORT=$report \
  cargo test --manifest-path "$here/Cargo.toml" --test partitions randomized_partition_trials \
  -- --ignored --nocapture > "$report.log" 2>&1 || rc=$?
echo "# exit $rc after $(( $(date +%s) - start )) s" | tee -a "$out"
if [ -s "$report" ]; then
  cat "$report" | tee -a "$out"
else
  grep -E "panicked|trial [0-9]+|lost|split" "$report.log" | head -20 | tee -a "$out"
fi
exit $rc

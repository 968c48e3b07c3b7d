#!/usr/bin/env bash
# The partition suite, randomized: seeded random faults, one after another on one three-site
# lab (`lifeboat lab up --agents`: east, west and a witness, each a network namespace with its
# etcd member). Each trial draws a fault — the primary's PostgreSQL killed or frozen, its site
# cut off or sending nothing, the witness site cut off, the primary site's etcd member or its
# agent killed — holds it 2-8 s, heals it and waits until the service is whole again. A writer
# on every site writes through its own site's endpoint and directly to each server; at the end
# every acknowledged write is looked for on the final primary (lost writes) and the servers'
# own clocks order who took writes when (split-brain windows: a server taking writes after
# another had begun to). Goals: 0 and 0. Per fault it also reports the longest time without
# an acknowledged write through the endpoint path, from the fault until the service was whole.
#
# Each KEEPER runs the same seeded trials on a fresh lab:
#   lifeboat                 Lifeboat's agents and site endpoints
#   patroni:TTL:LOOP:RETRY   Patroni (Debian's patroni package) beside each server on the same
#                            etcd members, synchronous_mode on; the "endpoint" path is libpq's
#                            multi-host string with target_session_attrs=read-write; the
#                            "agent killed" fault kills Patroni
# The deterministic set (each fault once, Lifeboat only) runs in CI: tests/partitions.rs. This
# counts, it does not time: the debug build of the tests is used.
# Usage: bench/partitions.sh [TRIALS=100] [SEED=date] [KEEPER...]   (as root)
#        default keepers: lifeboat patroni:5:1:2 (Patroni's aggressive timing)
set -euo pipefail
trials=${1:-100}
seed=${2:-$(date +%s)}
shift $(( $# > 2 ? 2 : $# ))
keepers=("$@")
[ ${#keepers[@]} -gt 0 ] || keepers=(lifeboat patroni:5:1:2)
here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/bench/results/partitions-$(date -u +%F).txt
mkdir -p "$here/bench/results"
for k in "${keepers[@]}"; do
  if [[ $k == patroni* ]] && ! command -v patroni >/dev/null; then
    apt-get install -y -q patroni python3-psycopg2 >/dev/null
  fi
done
cargo build --manifest-path "$here/Cargo.toml" --tests --bins -q
rc=0
for k in "${keepers[@]}"; do
  report=$(mktemp)
  echo "# bench/partitions.sh $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(etcd --version 2>/dev/null | head -1); $( [[ $k == patroni* ]] && patroni --version); keeper=$k trials=$trials seed=$seed" | tee -a "$out"
  start=$(date +%s)
  r=0
  LIFEBOAT_PARTITION_KEEPER=$k LIFEBOAT_PARTITION_TRIALS=$trials LIFEBOAT_PARTITION_SEED=$seed \
    LIFEBOAT_PARTITION_REPORT=$report \
    cargo test --manifest-path "$here/Cargo.toml" --test partitions randomized_partition_trials \
    -- --ignored --nocapture > "$report.log" 2>&1 || r=$?
  echo "# exit $r after $(( $(date +%s) - start )) s" | tee -a "$out"
  echo "(the run's log: $report.log)"
  if [ -s "$report" ]; then
    tee -a "$out" < "$report"
    echo | tee -a "$out"
  else
    grep -E "panicked|trial [0-9]+|lost|split" "$report.log" | head -20 | tee -a "$out"
  fi
  [ $r = 0 ] || rc=$r
done
exit $rc

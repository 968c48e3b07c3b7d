#!/usr/bin/env bash
# Replicated buckets: Lifeboat's replication (`lifeboat serve`, a bucket service, parallel 8)
# against rclone sync (Debian's rclone, --transfers 8 --checkers 8), between two S3-protocol
# servers on loopback (moto, one per "region"), in one run. Both tools copy the same source into
# their own replica bucket on the same server.
#   1. a first copy: N objects of 256 KiB and 4 of 32 MiB: seconds, objects/s, MB/s, peak RSS;
#   2. steady uploads (one 64 KiB object every 100 ms for 60 s) while the daemon runs: the
#      replication lag (now - replicated_until) sampled every 0.5 s: p50, p90, p99, max;
#   3. many small objects: BIG_N objects of 1 KiB, the first copy: seconds and peak RSS.
# moto is a Python server: these figures are bounded by it, and compare the tools on it.
# Usage: bench/buckets.sh [N=2000] [BIG_N=100000] [SECTIONS=123]   (as root, for apt)
set -euo pipefail
n=${1:-2000}
big_n=${2:-100000}
sections=${3:-123}
here=$(cd "$(dirname "$0")/.." && pwd)
day=$(date -u +%F)
out=$here/bench/results/buckets-$day${3:+-$3}.txt
mkdir -p "$here/bench/results"
. "$here/bench/lib/deps.sh"
need_deb rclone
python3 -c 'import moto.server, boto3' 2>/dev/null || python3 -m pip install -q 'moto[server]'
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null 2>&1
lb=$here/target/release/lifeboat
work=$(mktemp -d /tmp/lifeboat-bench-buckets.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
east=$(free_port); west=$(free_port)
python3 -m moto.server -H 127.0.0.1 -p "$east" >/dev/null 2>&1 & pids+=($!)
python3 -m moto.server -H 127.0.0.1 -p "$west" >/dev/null 2>&1 & pids+=($!)
for p in $east $west; do
  for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$p))" 2>/dev/null && break; sleep 0.1; done
done
E=http://127.0.0.1:$east W=http://127.0.0.1:$west
load() { python3 "$here/bench/lib/s3load.py" "$@"; }
export RCLONE_CONFIG_EAST_TYPE=s3 RCLONE_CONFIG_EAST_PROVIDER=Other RCLONE_CONFIG_EAST_ENDPOINT=$E \
  RCLONE_CONFIG_EAST_ACCESS_KEY_ID=testing RCLONE_CONFIG_EAST_SECRET_ACCESS_KEY=testing \
  RCLONE_CONFIG_WEST_TYPE=s3 RCLONE_CONFIG_WEST_PROVIDER=Other RCLONE_CONFIG_WEST_ENDPOINT=$W \
  RCLONE_CONFIG_WEST_ACCESS_KEY_ID=testing RCLONE_CONFIG_WEST_SECRET_ACCESS_KEY=testing
echo "# bench/buckets.sh $(date -u +%FT%TZ) on $(nproc) cores; $("$lb" --version); $(rclone version | head -1); moto $(python3 -c 'import moto; print(moto.__version__)')" | tee "$out"

# The plan for bucket SRC replicated into DST.
plan() {  # dir src dst
  mkdir -p "$1"
  cat > "$1/lifeboat.yaml" <<PLAN
name: bench-buckets
tiers: { std: { rpo: 15m, rto: 1h } }
sites: [east, west]
services:
  uploads:
    kind: bucket
    tier: std
    source: { url: "s3://$2?endpoint=$E&region=us-east-1", access_key_id: testing, secret_access_key: testing }
    replica: { url: "s3://$3?endpoint=$W&region=us-west-2", access_key_id: testing, secret_access_key: testing }
    interval: 1s
    parallel: 8
PLAN
}
state() { python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(s.get('pending_objects'), s.get('source_objects'), (s.get('last_pass') or {}).get('kind'), s.get('replicated_until_ms') or 0)" "$1/.lifeboat/buckets/uploads.json" 2>/dev/null || echo "- - - 0"; }
hwm() { awk '/VmHWM/{print int($2/1024)}' "/proc/$1/status"; }

# Lifeboat's first copy of bucket SRC into DST: prints "seconds peak_mb", leaves the daemon
# running (its pid in $work/$4.pid).
lifeboat_first_copy() {  # src dst objects name
  local dir=$work/$4; plan "$dir" "$1" "$2"
  load "$W" "$2" count >/dev/null
  local t0; t0=$(date +%s.%N)
  "$lb" --plan "$dir/lifeboat.yaml" serve 2>"$dir/daemon.log" & local pid=$!; echo $pid > "$work/$4.pid"
  while true; do
    read -r pending objects kind _ < <(state "$dir")
    [ "$kind" = full ] && [ "$pending" = 0 ] && [ "$objects" = "$3" ] && break
    kill -0 $pid 2>/dev/null || { tail -3 "$dir/daemon.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "$(echo "$(date +%s.%N) - $t0" | bc) $(hwm $pid)"
}

rclone_copy() {  # src dst: prints "seconds peak_mb"
  local t0; t0=$(date +%s.%N)
  # rclone refuses a custom CA bundle for its plain-HTTP endpoints.
  AWS_CA_BUNDLE= /usr/bin/time -f "%M" -o "$work/rclone.time" rclone sync "east:$1" "west:$2" --transfers 8 --checkers 8 -q
  echo "$(echo "$(date +%s.%N) - $t0" | bc) $(( $(cat "$work/rclone.time") / 1024 ))"
}

report() {  # label objects bytes seconds peak
  python3 -c "import sys; l,o,b,s,m=sys.argv[1:]; o,b,s=int(o),int(b),float(s); print(f'{l}: {s:.1f} s, {o/s:.0f} objects/s, {b/s/1e6:.1f} MB/s, peak RSS {m} MB')" "$@" | tee -a "$out"
}

if [[ $sections == *1* ]]; then
echo "## 1. first copy: $n objects of 256 KiB + 4 of 32 MiB" | tee -a "$out"
load "$E" uploads fill "$n" 262144
load "$E" uploads big 4 32
read -r objs bytes < <(load "$E" uploads count)
read -r s m < <(rclone_copy uploads uploads-rc); report "rclone sync" "$objs" "$bytes" "$s" "$m"
read -r s m < <(lifeboat_first_copy uploads uploads-dr "$objs" first); report "lifeboat" "$objs" "$bytes" "$s" "$m"
kill "$(cat "$work/first.pid")"; wait "$(cat "$work/first.pid")" 2>/dev/null || true
fi

if [[ $sections == *2* ]]; then
echo "## 2. steady uploads, one 64 KiB object every 100 ms for 60 s (interval 1s)" | tee -a "$out"
load "$E" steady fill 1 1024
lifeboat_first_copy steady steady-dr 1 steady >/dev/null
dir=$work/steady
( load "$E" steady steady 60 100 65536 > "$work/steady.count" ) &
loader=$!
: > "$work/lag.txt"
while kill -0 $loader 2>/dev/null; do
  read -r _ _ _ until < <(state "$dir")
  python3 -c "import time,sys; print(time.time()*1000 - int(sys.argv[1]))" "$until" >> "$work/lag.txt"
  sleep 0.5
done
python3 - "$work/lag.txt" <<'PY' | tee -a "$out"
import sys
v = [float(l) / 1000 for l in open(sys.argv[1]) if l.strip()]
# The first two samples (the first second) still show the first copy's listing, made before the
# load began: the steady state starts with the first pass after it.
v = sorted(v[2:])
q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
print(f"lifeboat lag over {len(v)} samples: p50 {q(0.5):.2f} s, p90 {q(0.9):.2f} s, p99 {q(0.99):.2f} s, max {v[-1]:.2f} s")
PY
echo "uploads in 60 s: $(cat "$work/steady.count")" | tee -a "$out"
kill "$(cat "$work/steady.pid")"; wait "$(cat "$work/steady.pid")" 2>/dev/null || true
fi

if [[ $sections == *3* ]]; then
echo "## 3. many objects: $big_n of 1 KiB" | tee -a "$out"
t0=$(date +%s)
load "$E" many fill "$big_n" 1024
echo "(uploaded in $(( $(date +%s) - t0 )) s)" | tee -a "$out"
read -r objs bytes < <(load "$E" many count)
read -r s m < <(rclone_copy many many-rc); report "rclone sync" "$objs" "$bytes" "$s" "$m"
read -r s m < <(lifeboat_first_copy many many-dr "$objs" many); report "lifeboat" "$objs" "$bytes" "$s" "$m"
kill "$(cat "$work/many.pid")" 2>/dev/null || true
fi
echo "# raw: $out" | tee -a "$out"

#!/usr/bin/env bash
# How far the WAL archive trails the primary under pgbench: the age of the newest commit the
# archive can restore to (`lifeboat wal verify`'s window end), sampled while pgbench writes, with
# archive_command alone and with the streaming archive (`wal_stream`, `lifeboat serve` running).
# Usage: bench/walstream.sh [SECONDS=40] [WORK=/var/tmp/lifeboat-walstream]  (as root)
set -euo pipefail
secs=${1:-40}
work=${2:-/var/tmp/lifeboat-walstream}
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/bench/lib/plan.sh"
BIN=/usr/lib/postgresql/15/bin
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null 2>&1
asp() { runuser -u postgres -- "$@"; }
port=5460
asp $BIN/pg_ctl -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
pkill -f "$work/lifeboat" 2>/dev/null || true
rm -rf "$work"; mkdir -p "$work"; chmod 755 "$work"
cp "$here/target/release/lifeboat" "$work/lifeboat"; lb="$work/lifeboat"
echo bench-password > "$work/key"; chmod 600 "$work/key"
pg_plan walstream 127.0.0.1 "$port" "$work/data" "$work/repo" "$work/key" > "$work/plain.yaml"
pg_plan walstream 127.0.0.1 "$port" "$work/data" "$work/repo" "$work/key" "    wal_stream: { interval: 500ms }" > "$work/stream.yaml"
chown -R postgres "$work"
asp $BIN/initdb -D "$work/data" -U postgres -A trust >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
wal_level = replica
archive_mode = on
archive_command = 'LIFEBOAT_STATE_DIR=$work/.lifeboat $lb --plan $work/plain.yaml wal push db %p'
max_wal_size = 4GB
CONF
asp $BIN/pg_ctl -D "$work/data" -l "$work/pg.log" -w start >/dev/null
LB="env LIFEBOAT_PROGRESS=0 LIFEBOAT_STATE_DIR=$work/.lifeboat $lb"
asp $LB --plan "$work/plain.yaml" repo init main >/dev/null
asp $BIN/pgbench -h 127.0.0.1 -p $port -U postgres -i -s 10 -q postgres >/dev/null 2>&1
asp $LB --plan "$work/plain.yaml" backup db-base >/dev/null
echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); pgbench -c 2 for $secs s"
pct() { sort -n | awk '{a[NR]=$1} END {printf "n %d p50 %.2f p90 %.2f p99 %.2f max %.2f\n", NR, a[int(NR*0.5)+1], a[int(NR*0.9)+1], a[int(NR*0.99)+1], a[NR]}'; }
for mode in archive_command stream; do
  daemon=
  if [ $mode = stream ]; then
    asp $LB --plan "$work/stream.yaml" serve > "$work/serve.log" 2>&1 &
    daemon=$!
    for _ in $(seq 1 100); do grep -q '"action":"streaming"' "$work/serve.log" && break; sleep 0.2; done
  fi
  asp $BIN/pgbench -h 127.0.0.1 -p $port -U postgres -n -c 2 -T "$secs" postgres > "$work/pgbench-$mode.txt" 2>&1 &
  bench=$!
  sleep 3
  : > "$work/lag-$mode.txt"
  end=$(( $(date +%s) + secs - 5 ))
  while [ "$(date +%s)" -lt $end ]; do
    now=$(date +%s%6N)
    w=$(asp $LB --plan "$work/plain.yaml" --json wal verify db 2>/dev/null | python3 -c 'import json,sys; v=json.load(sys.stdin); print((v[0].get("window") or [0,0])[1])')
    echo "$now $w" | awk '{printf "%.3f\n", ($1-$2)/1e6}' >> "$work/lag-$mode.txt"
  done
  wait $bench
  echo "$mode lag_s $(pct < "$work/lag-$mode.txt") tps $(grep -oE 'tps = [0-9.]+' "$work/pgbench-$mode.txt" | head -1)"
  [ -n "$daemon" ] && { kill $daemon; wait $daemon 2>/dev/null || true; }
done
grep -c '"action":"archived"' "$work/serve.log" | sed 's/^/stream archived_passes /'
asp $BIN/pg_ctl -D "$work/data" -m fast -w stop >/dev/null

#!/usr/bin/env bash
# WAL push latency per 16 MiB segment, side by side in one run, fresh segments of pgbench WAL:
#   pgbackrest   pgBackRest 2.45 archive-push (zstd, aes-256-cbc), into an empty stanza
#   process      lifeboat wal push in its own process (LIFEBOAT_WAL_HANDOFF=off), empty archive
#   daemon       lifeboat wal push handed to a running `lifeboat serve` over its WAL handoff
#                socket, into another empty archive
# Every segment is pushed by all three (the order rotating from segment to segment), each push
# timed from the command's start to its exit, as PostgreSQL's archiver waits for it. The
# segments are copies in the page cache (PostgreSQL just wrote them), the same for all three.
# One warm-up push per tool first (the first Lifeboat push derives and caches the WAL key).
# Usage: bench/walpush.sh [SEGMENTS=40] [WORK=/var/tmp/lifeboat-walpush]   (as root)
set -euo pipefail
n=${1:-40}
work=${2:-/var/tmp/lifeboat-walpush}
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/bench/lib/plan.sh"
BIN=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || apt-get install -y -qq pgbackrest >/dev/null
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null 2>&1
asp() { runuser -u postgres -- "$@"; }
port=5452
[ -d "$work/data" ] && asp $BIN/pg_ctl -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
pkill -f "$work/lifeboat --plan $work/b/lifeboat.yaml serve" 2>/dev/null || true
rm -rf "$work"; mkdir -p "$work/log" "$work/a" "$work/b" "$work/segs"; chmod 755 "$work"
cp "$here/target/release/lifeboat" "$work/lifeboat"; lb="$work/lifeboat"
echo bench-password > "$work/key"; chmod 600 "$work/key"
for p in a b; do
  pg_plan "walpush-$p" "$work" "$port" "$work/data" "$work/$p/repo" "$work/key" "    wal_repository: main" "" > "$work/$p/lifeboat.yaml"
done
cat > "$work/pgbackrest.conf" <<CONF
[global]
repo1-path=$work/pgbr-repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-cipher-pass
compress-type=zst
log-level-console=warn
log-path=$work/log
lock-path=$work/lock
spool-path=$work/spool
[bench]
pg1-path=$work/data
pg1-port=$port
pg1-socket-path=$work
CONF
chown -R postgres "$work"
asp $BIN/initdb -D "$work/data" -U postgres --data-checksums >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
port = $port
unix_socket_directories = '$work'
listen_addresses = ''
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
max_wal_size = 4GB
wal_keep_size = 4GB
CONF
asp $BIN/pg_ctl -D "$work/data" -l "$work/pg.log" -w start >/dev/null
PGBR="pgbackrest --config=$work/pgbackrest.conf --stanza=bench"
asp $PGBR stanza-create >/dev/null
for p in a b; do asp env LIFEBOAT_PROGRESS=0 "$lb" --plan "$work/$p/lifeboat.yaml" repo init main >/dev/null; done
# WAL to push: pgbench until there are n+2 completed segments, copied out of pg_wal.
asp $BIN/pgbench -h "$work" -p $port -U postgres -i -s 10 -q postgres >/dev/null 2>&1
while [ "$(ls "$work/data/pg_wal" | grep -cE '^[0-9A-F]{24}$')" -lt $((n + 4)) ]; do
  asp $BIN/pgbench -h "$work" -p $port -U postgres -T 5 -c 2 postgres >/dev/null 2>&1
done
asp psql -X -h "$work" -p $port -U postgres -qAt -c "select pg_switch_wal()" >/dev/null
ls "$work/data/pg_wal" | grep -E '^[0-9A-F]{24}$' | head -$((n + 1)) | while read -r s; do
  cp "$work/data/pg_wal/$s" "$work/segs/$s"
done
chown -R postgres "$work/segs"
asp env LIFEBOAT_PROGRESS=0 "$lb" --plan "$work/b/lifeboat.yaml" serve 2> "$work/serve.log" &
for _ in $(seq 100); do [ -S "$work/b/.lifeboat/wal.sock" ] && break; sleep 0.1; done
# The timed loop runs as postgres, in one shell: no runuser per push.
cat > "$work/loop.sh" <<SH
set -u
cd "$work/data"
push() { # tool segment -> elapsed ms (or FAILED)
  local t0=\$EPOCHREALTIME r=0
  case \$1 in
    pgbackrest) $PGBR archive-push "$work/segs/\$2" >/dev/null 2>>"$work/err.log" || r=1 ;;
    process) LIFEBOAT_WAL_HANDOFF=off LIFEBOAT_PROGRESS=0 "$lb" --plan "$work/a/lifeboat.yaml" wal push db "$work/segs/\$2" >/dev/null 2>>"$work/err.log" || r=1 ;;
    daemon) LIFEBOAT_PROGRESS=0 "$lb" --plan "$work/b/lifeboat.yaml" wal push db "$work/segs/\$2" >/dev/null 2>>"$work/err.log" || r=1 ;;
  esac
  local t1=\$EPOCHREALTIME
  [ \$r = 0 ] && echo "\$1 \$(( (\${t1/./} - \${t0/./}) / 1000 ))" || echo "\$1 FAILED"
}
tools=(pgbackrest process daemon)
first=1; i=0
for s in \$(ls "$work/segs"); do
  if [ \$first = 1 ]; then for t in "\${tools[@]}"; do push \$t \$s > /dev/null; done; first=0; continue; fi
  for k in 0 1 2; do push \${tools[\$(( (i + k) % 3 ))]} \$s; done
  i=\$((i + 1))
done
SH
asp bash "$work/loop.sh" > "$work/lat.txt"
pkill -f "$work/lifeboat --plan $work/b/lifeboat.yaml serve" || true; wait 2>/dev/null || true
echo "# bench/walpush.sh $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $($lb --version); $(pgbackrest version); $n fresh segments of pgbench WAL"
pct() { sort -n | awk '{a[NR]=$1} END {printf "p50 %s p90 %s p99 %s min %s max %s n %d\n", a[int((NR+1)/2)], a[int(NR*0.9+0.999)], a[int(NR*0.99+0.999)], a[1], a[NR], NR}'; }
for t in pgbackrest process daemon; do
  echo "$t push_ms $(awk -v t=$t '$1 == t && $2 != "FAILED" {print $2}' "$work/lat.txt" | pct) failed $(awk -v t=$t '$1 == t && $2 == "FAILED"' "$work/lat.txt" | wc -l)"
done
echo "daemon handoffs stored $(grep -c '"event":"wal handoff".*"outcome":"stored"' "$work/serve.log" || true), left to the process $(grep -c 'left to the process' "$work/serve.log" || true)"
asp $BIN/pg_ctl -D "$work/data" -m immediate stop >/dev/null

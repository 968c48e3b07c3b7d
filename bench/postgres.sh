#!/usr/bin/env bash
# Lifeboat vs pgBackRest 2.45 (the anchor) on one pgbench cluster, side by side in one run.
# Both archive the same WAL (archive_command pushes to each). Per round, alternating tools:
#   full base backup; pgbench -T 30 (the middle of it is the PITR target); second backup;
#   restore + PITR to that middle time until the server accepts writes.
# Then archive-push latency per 16 MiB segment: the anchor's way (the same segment pushed again:
# an idempotent re-push) and, for Lifeboat, fresh segments into an empty archive.
# pgBackRest settings as the issue asks: process-max=2, zstd, aes-256-cbc, start-fast=y. Lifeboat
# runs on the database host, so it reads the data directory in place (pg_backup_start with a
# fast checkpoint); its full step is `backup --full` (every file read, as pgBackRest --type=full),
# its second step a plain `backup` (files unchanged since the last backup taken unread).
# Usage: bench/postgres.sh [SCALE=100] [RUNS=3] [WORK=/var/tmp/lifeboat-pgbench]  (as root)
set -euo pipefail
scale=${1:-100}
runs=${2:-3}
work=${3:-/var/tmp/lifeboat-pgbench}
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/bench/lib/plan.sh"
BIN=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || apt-get install -y -qq pgbackrest >/dev/null
command -v /usr/bin/time >/dev/null 2>&1 || apt-get install -y -qq time >/dev/null
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null 2>&1
lb_src="$here/target/release/lifeboat"
asp() { runuser -u postgres -- "$@"; }
port=5450
asp $BIN/pg_ctl -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
asp $BIN/pg_ctl -D "$work/restore" -m immediate stop >/dev/null 2>&1 || true
rm -rf "$work"; mkdir -p "$work/log"; chmod 755 "$work"
cp "$lb_src" "$work/lifeboat"; lb="$work/lifeboat"
cat > "$work/pgbackrest.conf" <<CONF
[global]
repo1-path=$work/pgbr-repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-cipher-pass
repo1-retention-full=10
compress-type=zst
process-max=2
start-fast=y
log-level-console=warn
log-path=$work/log
lock-path=$work/lock
spool-path=$work/spool
[bench]
pg1-path=$work/data
pg1-port=$port
pg1-socket-path=$work
CONF
PGBR="pgbackrest --config=$work/pgbackrest.conf --stanza=bench"
echo bench-password > "$work/key"; chmod 600 "$work/key"
pg_plan bench "$work" "$port" "$work/data" "$work/lb-repo" "$work/key" > "$work/lifeboat.yaml"
# A second plan with an empty archive, for fresh-segment push latency.
sed -e "s#$work/lb-repo#$work/lb-repo2#" -e "s#name: bench#name: bench2#" "$work/lifeboat.yaml" > "$work/lifeboat2.yaml"
mkdir -p "$work/state2"
chown -R postgres "$work"
asp $BIN/initdb -D "$work/data" -U postgres --data-checksums >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
port = $port
unix_socket_directories = '$work'
listen_addresses = '127.0.0.1'
wal_level = replica
archive_mode = on
archive_command = '$PGBR archive-push %p && $lb --plan $work/lifeboat.yaml wal push db %p'
max_wal_size = 4GB
CONF
asp $BIN/pg_ctl -D "$work/data" -l "$work/pg.log" -w start >/dev/null
psql_() { asp psql -X -h "$work" -p $port -U postgres -qAt "$@"; }
asp $PGBR stanza-create >/dev/null
asp env LIFEBOAT_PROGRESS=0 $lb --plan "$work/lifeboat.yaml" repo init main >/dev/null
asp env LIFEBOAT_PROGRESS=0 $lb --plan "$work/lifeboat2.yaml" repo init main >/dev/null
t0=$(date +%s.%N); asp $BIN/pgbench -h "$work" -p $port -U postgres -i -s "$scale" -q postgres >/dev/null 2>&1; t1=$(date +%s.%N)
echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); scale $scale"
echo "pgbench_init_s $(echo "$t1 - $t0" | bc)"
echo "db_bytes $(psql_ -c "select pg_database_size('postgres')")"
psql_ -c "checkpoint" >/dev/null
timed() { # tool label cmd... -> "tool label wall_s maxrss_kb"
  local tool=$1 label=$2; shift 2
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$work/t.out" "$@" >/dev/null 2>"$work/e.out" || { echo "$tool $label FAILED $(tail -3 "$work/e.out")"; return 1; }
  read -r w m < "$work/t.out"; echo "$tool $label $w $m"; }
LBR="env LIFEBOAT_PROGRESS=0 $lb --plan $work/lifeboat.yaml"
for r in $(seq 1 "$runs"); do
  timed pgbackrest full_backup runuser -u postgres -- $PGBR --type=full backup
  timed lifeboat full_backup runuser -u postgres -- $LBR backup db-base --full
  asp $BIN/pgbench -h "$work" -p $port -U postgres -T 30 -c 2 postgres >/dev/null 2>&1 &
  bp=$!; sleep 15; mid=$(psql_ -c "select now()"); wait $bp
  psql_ -c "select pg_switch_wal()" >/dev/null; sleep 3
  timed pgbackrest second_backup runuser -u postgres -- $PGBR --type=incr backup
  timed lifeboat second_backup runuser -u postgres -- $LBR backup db-base
  echo "lifeboat second_backup_stored_bytes $(asp $LBR --json snapshots | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["bytes_added"])')"
  # pgBackRest: restore + PITR to mid, start, wait until not in recovery.
  rm -rf "$work/restore"; mkdir -p "$work/restore"; chown postgres "$work/restore"; chmod 700 "$work/restore"
  cat > "$work/pgbr-restore.sh" <<SH
set -e
$PGBR --pg1-path=$work/restore --type=time "--target=$mid" --target-action=promote restore
echo "port = 5451" >> $work/restore/postgresql.auto.conf
echo "archive_mode = off" >> $work/restore/postgresql.auto.conf
$BIN/pg_ctl -D $work/restore -l $work/restore.log -w -t 600 start
until [ "\$(psql -X -h $work -p 5451 -U postgres -qAt -c 'select pg_is_in_recovery()')" = "f" ]; do sleep 0.2; done
psql -X -h $work -p 5451 -U postgres -qAt -c 'create table written_after_restore(x int)'
SH
  chmod 755 "$work/pgbr-restore.sh"
  timed pgbackrest restore_pitr runuser -u postgres -- bash "$work/pgbr-restore.sh"
  asp $BIN/pg_ctl -D "$work/restore" -m immediate -w stop >/dev/null
  rm -rf "$work/restore"; mkdir -p "$work/restore"; chown postgres "$work/restore"; chmod 700 "$work/restore"
  # Lifeboat: the same, in one command (it waits until a write succeeds).
  timed lifeboat restore_pitr runuser -u postgres -- $LBR restore db --to "$mid" --target "$work/restore" --start 5451
  asp $BIN/pg_ctl -D "$work/restore" -m immediate -w stop >/dev/null
done
# archive-push latency.
segs=$(ls "$work/data/pg_wal" | grep -E '^[0-9A-F]{24}$' | head -20)
seg=$(echo "$segs" | head -1)
pct() { sort -n | awk '{a[NR]=$1} END {print "p50", a[int(NR/2)+1], "p99", a[NR]}'; }
for tool in pgbackrest lifeboat; do
  lat=()
  for i in $(seq 1 20); do
    s=$(date +%s%N)
    if [ $tool = pgbackrest ]; then asp $PGBR archive-push "$work/data/pg_wal/$seg" >/dev/null 2>&1 || true
    else asp $LBR wal push db "$work/data/pg_wal/$seg" >/dev/null 2>&1 || true; fi
    e=$(date +%s%N); lat+=($(( (e - s) / 1000000 )))
  done
  echo "$tool archive_push_repeat_ms $(printf '%s\n' "${lat[@]}" | pct)"
done
# Fresh segments into an empty Lifeboat archive (the first call derives and caches the WAL key).
lat=()
for f in $segs; do
  s=$(date +%s%N); asp env LIFEBOAT_PROGRESS=0 $lb --plan "$work/lifeboat2.yaml" wal push db "$work/data/pg_wal/$f" >/dev/null; e=$(date +%s%N)
  lat+=($(( (e - s) / 1000000 )))
done
echo "lifeboat archive_push_fresh_first_ms ${lat[0]}"
echo "lifeboat archive_push_fresh_ms $(printf '%s\n' "${lat[@]:1}" | pct)"
echo "pgbackrest repo_bytes $(du -sb "$work/pgbr-repo" | cut -f1)"
echo "lifeboat repo_bytes $(du -sb "$work/lb-repo" | cut -f1)"
asp $BIN/pg_ctl -D "$work/data" -m fast -w stop >/dev/null

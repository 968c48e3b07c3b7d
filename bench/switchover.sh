#!/usr/bin/env bash
# Planned switchover and rejoin, measured (issue 5).
#  1. Switchover downtime as a client sees it: a pg-pair.sh pair (sync), `lifeboat serve` on it
#     (bench/lifeboat-orchestrator.sh), ../shared/harness/writer.py writing through the endpoint
#     every 20 ms, `lifeboat switchover db --to <the standby>` back and forth N times; the gap
#     is the client's last acknowledged write on the old primary → its first on the new one
#     (from the writer's log, which names the server of every write), check_writes.py counts
#     lost acknowledged writes (must be 0). Lifeboat's own figure (writes stopped → the new
#     primary took a write) is listed beside it.
#  2. Rejoin at pgbench scale S: kill -9 the primary, `lifeboat failover --yes` (no daemon),
#     `pgbench -T 10` on the new primary, then time `lifeboat rejoin` (pg_rewind) against a
#     re-clone of the same cluster (pg_basebackup -X stream), R rounds (failback in between).
# Usage: bench/switchover.sh [N=10] [SCALE=100] [ROUNDS=3]   (as root)
set -euo pipefail
n=${1:-10}
scale=${2:-100}
rounds=${3:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
H=$(cd "$here/../shared/harness" && pwd)
PY=/usr/bin/python3
BIN=/usr/lib/postgresql/15/bin
day=$(date -u +%F)
out=$here/bench/results/switchover-$day.txt
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null 2>&1
lb="$here/target/release/lifeboat"
orch="$here/bench/lifeboat-orchestrator.sh"
pair=/tmp/lifeboat-bench-sw
work=/tmp/lifeboat-bench-sw-work
dsn="host=127.0.0.1 port=6432 dbname=postgres user=postgres password=harness-super-pw"
cleanup() {
  "$orch" down "$pair" >/dev/null 2>&1 || true
  "$H/pg-pair.sh" down "$pair" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup; rm -rf "$pair" "$pair.lifeboat" "$work"; mkdir -p "$work"
echo "# bench/switchover.sh $(date -u +%FT%TZ) on $(nproc) cores; $("$lb" --version)" | tee "$out"

# ---- 1. switchover downtime
"$H/pg-pair.sh" up "$pair" --sync >/dev/null
"$orch" up "$pair"
plan="$pair.lifeboat/lifeboat.yaml"
to=west
for k in $(seq "$n"); do
  "$PY" "$H/writer.py" --dsn "$dsn" --out "$work/sw-$k.jsonl" --interval-ms 20 --duration 7 \
    --run-id "sw$k-$$" 2>/dev/null &
  wpid=$!
  sleep 2
  t=$("$PY" -c 'import time; print(time.time())')
  "$lb" --plan "$plan" --json switchover db --to "$to" > "$work/sw-$k.json" || true
  wait "$wpid" || true
  "$PY" "$H/check_writes.py" --log "$work/sw-$k.jsonl" --dsn "$dsn" --fault-at "$t" --json \
    > "$work/chk-$k.json" || true
  "$PY" - "$work/sw-$k.json" "$work/chk-$k.json" "$k" "$to" "$work/sw-$k.jsonl" <<'PYEOF' | tee -a "$out"
import json, sys
sw = json.load(open(sys.argv[1])) if open(sys.argv[1]).read().strip() else {}
c = json.load(open(sys.argv[2]))
# Downtime as the client saw it: its last acknowledged write on the old primary -> its first
# acknowledged write on the new one (writer.py logs the server of every write).
ok = [json.loads(l) for l in open(sys.argv[5])]
ok = [r for r in ok if r.get("ok")]
old = ok[0]["server_port"] if ok else None
last_old = max((r["t_end"] for r in ok if r["server_port"] == old), default=None)
new = [r["t_end"] for r in ok if r["server_port"] != old and last_old and r["t_end"] > last_old]
gap = f"{min(new) - last_old:.3f}" if new else None
print(f"switchover trial={sys.argv[3]} to={sys.argv[4]} gap_s={gap} lost={c.get('lost')} "
      f"servers_after={c.get('primaries_after_fault')} lifeboat_downtime_ms={sw.get('downtime_ms')} "
      f"aborted={sw.get('aborted')} old_primary_streaming={sw.get('old_primary_streaming')}")
PYEOF
  if [ "$to" = west ]; then to=east; else to=west; fi
  sleep 1
done
"$PY" - "$out" <<'PYEOF' | tee -a "$out"
import re, statistics, sys
g = []; lost = 0; d = []
for l in open(sys.argv[1]):
    if l.startswith("switchover trial="):
        m = dict(kv.split("=", 1) for kv in l.split()[1:])
        if m["gap_s"] != "None": g.append(float(m["gap_s"]))
        if m["lifeboat_downtime_ms"] != "None": d.append(int(m["lifeboat_downtime_ms"]))
        lost += int(m["lost"]) if m["lost"].isdigit() else 0
g.sort(); d.sort()
p95 = lambda v: v[max(0, -(-len(v) * 95 // 100) - 1)] if v else None
print(f"SWITCHOVER n={len(g)} gap_s median={statistics.median(g):.3f} p95={p95(g):.3f} "
      f"lifeboat_downtime_ms median={statistics.median(d)} p95={p95(d)} lost_total={lost}")
PYEOF
"$orch" down "$pair"

# ---- 2. rejoin: pg_rewind vs a re-clone (an async pair: a manual failover without a daemon's
# history cannot verify which standby was synchronous, and refuses in a sync tier)
"$H/pg-pair.sh" down "$pair" >/dev/null
"$H/pg-pair.sh" up "$pair" --async >/dev/null
"$orch" up "$pair" && "$orch" down "$pair"   # writes the plan; no daemon during this part
export PGPASSWORD=harness-super-pw
# Both members keep 2 GB of WAL, so the new primary still has its WAL from the fork when the
# old one is rejoined and pg_rewind is measured (without it, rejoin sees the WAL recycled and
# re-clones: the `method=` column says which happened).
for port in $(grep -E "^(EAST|WEST)_PORT=" "$pair/pair.env" | cut -d= -f2); do
  "$BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "ALTER SYSTEM SET wal_keep_size = '2GB'" -c "SELECT pg_reload_conf()" >/dev/null
done
"$BIN/pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$(grep ^EAST_PORT= "$pair/pair.env" | cut -d= -f2)" -U postgres postgres >/dev/null 2>&1
primary=east; standby=west
for r in $(seq "$rounds"); do
  pport=$(grep "^${primary^^}_PORT=" "$pair/pair.env" | cut -d= -f2)
  sport=$(grep "^${standby^^}_PORT=" "$pair/pair.env" | cut -d= -f2)
  pdata=$(grep "^${primary^^}_DATA=" "$pair/pair.env" | cut -d= -f2)
  # the standby has everything (sync), then the primary dies
  kill -9 "$(head -1 "$pdata/postmaster.pid")"
  sleep 1
  "$lb" --plan "$plan" failover db --yes --to "$standby" >/dev/null
  "$BIN/pgbench" -T 10 -c 2 -h 127.0.0.1 -p "$sport" -U postgres postgres >/dev/null 2>&1
  t0=$(date +%s.%N)
  "$lb" --plan "$plan" --json rejoin db "$primary" > "$work/rejoin-$r.json" \
    || { echo "rejoin of $primary failed:"; cat "$work/rejoin-$r.json"; tail -5 "$pdata/log/lifeboat-start.log"; exit 1; }
  t1=$(date +%s.%N)
  rm -rf "$work/clone"; mkdir -p "$work/clone"; chown postgres "$work/clone"
  c0=$(date +%s.%N)
  # as the pair's standbys clone: its replication role (pg_hba lets only that one replicate)
  runuser -u postgres -- env PGPASSWORD="$(grep ^REPL_PASSWORD= "$pair/pair.env" | cut -d= -f2)" \
    "$BIN/pg_basebackup" -h 127.0.0.1 -p "$sport" -U "$(grep ^REPL_USER= "$pair/pair.env" | cut -d= -f2)" \
    -D "$work/clone" -X stream --checkpoint=fast
  c1=$(date +%s.%N)
  rm -rf "$work/clone"
  echo "rejoin round=$r member=$primary method=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["method"])' "$work/rejoin-$r.json") rejoin_s=$(echo "$t1 - $t0" | bc) reclone_s=$(echo "$c1 - $c0" | bc)" | tee -a "$out"
  # give the primary back for the next round
  "$lb" --plan "$plan" switchover db --to "$primary" > "$work/back-$r.txt" 2>&1 \
    || { echo "switchover back to $primary failed:"; cat "$work/back-$r.txt"; exit 1; }
done
"$PY" - "$out" <<'PYEOF' | tee -a "$out"
import statistics, sys
rw = []; rc = []
for l in open(sys.argv[1]):
    if l.startswith("rejoin round="):
        m = dict(kv.split("=", 1) for kv in l.split()[1:])
        rw.append(float(m["rejoin_s"])); rc.append(float(m["reclone_s"]))
print(f"REJOIN n={len(rw)} pg_rewind median={statistics.median(rw):.2f}s re-clone median={statistics.median(rc):.2f}s "
      f"ratio={statistics.median(rc)/statistics.median(rw):.1f}x")
PYEOF

#!/usr/bin/env bash
# An application tier failing over with its database, through the DNS name, as a client sees
# it. A PostgreSQL pair (../shared/harness/pg-pair.sh, async) under `lifeboat serve` (default
# failover settings), an app server per site (east on 127.0.0.1, west on 127.0.0.2, same
# port), and service `app` with `follows: db`, default checks (500 ms, 3 failures) and the name
# app.bench.internal (TTL 1 s) on the daemon's responder. Each trial loses the east site: its
# postmaster and its app server are SIGKILLed at once. A client resolves the name every 20 ms
# without a cache and GETs / from the answer. Measured from the kill: when the name first
# answers west, and when the first request through the name succeeds. A fresh pair per trial.
# Usage: bench/appfailover.sh [TRIALS=10]   (as root)
set -euo pipefail
trials=${1:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
H=$(cd "$here/../shared/harness" && pwd)
day=$(date -u +%F)
out=$here/bench/results/appfailover-$day.txt
mkdir -p "$here/bench/results"
. "$here/bench/lib/deps.sh"
need_deb python3-psycopg2
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null 2>&1
orch="$here/bench/lifeboat-orchestrator.sh"
pair=/tmp/lifeboat-bench-apppair
dns=15353 http=18080
PY=/usr/bin/python3
echo "# bench/appfailover.sh $(date -u +%FT%TZ) on $(nproc) cores; $("$here/target/release/lifeboat" --version)" | tee "$out"
export EXTRA_SERVICES="  app:
    kind: http
    tier: gold
    follows: db
    health:
      east: http://127.0.0.1:$http/health
      west: http://127.0.0.2:$http/health
    dns: { listen: \"127.0.0.1:$dns\", name: app.bench.internal, ttl: 1s }"
apps=()
cleanup() {
  for p in "${apps[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  apps=()
  "$orch" down "$pair" >/dev/null 2>&1 || true
  [ -e "$pair/pair.env" ] && "$H/pg-pair.sh" down "$pair" >/dev/null 2>&1 || true
  rm -rf "$pair" "$pair.lifeboat"
}
trap cleanup EXIT
for t in $(seq "$trials"); do
  cleanup
  "$H/pg-pair.sh" up "$pair" --async >/dev/null
  $PY "$here/bench/lib/appserver.py" 127.0.0.1 $http east & apps+=($!); east=$!
  $PY "$here/bench/lib/appserver.py" 127.0.0.2 $http west & apps+=($!)
  LOGS=/tmp/lifeboat-bench-app/logs "$orch" up "$pair" >/dev/null
  for _ in $(seq 100); do
    [ "$(dig +short +tries=1 +time=1 @127.0.0.1 -p $dns app.bench.internal)" = 127.0.0.1 ] && break
    sleep 0.1
  done
  go=$pair.lifeboat/go; rm -f "$go"
  $PY "$here/bench/lib/appclient.py" $dns app.bench.internal 127.0.0.2 $http "$go" > "$pair.lifeboat/client.json" &
  client=$!
  sleep 1
  pid=$(head -1 "$pair/east/data/postmaster.pid")
  touch "$go"; kill -9 "$pid" "$east"
  wait "$client"
  echo "trial=$t $(cat "$pair.lifeboat/client.json")" | tee -a "$out"
done
$PY - "$out" <<'PYEOF' | tee -a "$out"
import json, statistics, sys
rows = [json.loads(l.split(" ", 1)[1]) for l in open(sys.argv[1]) if l.startswith("trial=")]
for k, what in (("dns_s", "the name answers west"), ("http_s", "first request through the name succeeds")):
    v = sorted(r[k] for r in rows if r[k] is not None)
    missing = sum(1 for r in rows if r[k] is None)
    if v:
        print(f"SUMMARY {what}: median {statistics.median(v):.2f} s, min {v[0]:.2f}, max {v[-1]:.2f} over {len(v)} trials ({missing} never)")
PYEOF

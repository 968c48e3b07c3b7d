#!/usr/bin/env bash
# Start and stop Lifeboat's agents (one per member, coordinated through a one-member etcd on
# loopback) on a pair made by ../shared/harness/pg-pair.sh, for the harness's trial.sh.
#   bench/lifeboat-agents.sh up   PAIR_DIR   a plan from PAIR_DIR/pair.env with `coordinator:`,
#                                            a fresh etcd, `lifeboat agent` for east and west;
#                                            returns once the primary's agent holds the lease
#   bench/lifeboat-agents.sh down PAIR_DIR   stop the agents and etcd
#   bench/lifeboat-agents.sh kill-primary-agent PAIR_DIR
#                                            SIGKILL the agent beside the primary (with the
#                                            harness's kill-primary: the whole node lost)
# Environment: LIFEBOAT (binary, default the release build), ETCD_PORT (default 23790), LOGS
# (each run's logs, default PAIR_DIR.logs), SITE_PORTS=EAST,WEST (loopback ports for each
# site's traffic endpoint, `failover.site_listen`, run by that site's agent; unset: no
# endpoints, clients use libpq's multi-host DSN over the servers).
set -euo pipefail
action=${1:?up|down|kill-primary-agent}
dir=${2:?PAIR_DIR}
dir=${dir%/}
here=$(cd "$(dirname "$0")/.." && pwd)
lb=${LIFEBOAT:-$here/target/release/lifeboat}
eport=${ETCD_PORT:-23790}
st=$dir.agents
PY=${PYTHON:-/usr/bin/python3}
penv() { "$PY" -B -c 'import sys; sys.path.insert(0, sys.argv[1]); import pairctl; print(pairctl.load_env(sys.argv[2]).get(sys.argv[3], ""))' "$here/../shared/harness" "$dir/pair.env" "$1"; }

stop_pid() {  # file
  [ -r "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if [ -d "/proc/$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

stop_all() {
  [ -d "$st" ] || return 0
  for m in east west; do stop_pid "$st/agent-$m.pid"; done
  stop_pid "$st/etcd.pid"
  mkdir -p "${LOGS:-$dir.logs}"
  for f in "$st"/agent-*.log; do
    [ -s "$f" ] && mv "$f" "${LOGS:-$dir.logs}/$(basename "$f" .log)-$(date -u +%Y%m%dT%H%M%S%N).log"
  done
  rm -rf "$st"
}

case "$action" in
  up)
    stop_all
    mkdir -p "$st"; chmod 700 "$st"
    printf '%s\n' "$(penv SUPERUSER_PASSWORD)" > "$st/pw"; chmod 600 "$st/pw"
    nohup etcd --name one --data-dir "$st/etcd" \
      --listen-client-urls "http://127.0.0.1:$eport" --advertise-client-urls "http://127.0.0.1:$eport" \
      --listen-peer-urls "http://127.0.0.1:$((eport + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((eport + 1))" \
      --initial-cluster "one=http://127.0.0.1:$((eport + 1))" \
      --heartbeat-interval 100 --election-timeout 500 >"$st/etcd.log" 2>&1 < /dev/null &
    echo $! > "$st/etcd.pid"
    cat > "$st/lifeboat.yaml" <<PLAN
name: harness-pair
tiers:
  gold: { rpo: 1s, rto: 30s }
sites: [east, west]
services:
  db:
    kind: postgres
    tier: gold
    members:
      east: { host: $(penv EAST_HOST), port: $(penv EAST_PORT), user: $(penv SUPERUSER), password: "file:$st/pw", data_dir: $(penv EAST_DATA) }
      west: { host: $(penv WEST_HOST), port: $(penv WEST_PORT), user: $(penv SUPERUSER), password: "file:$st/pw", data_dir: $(penv WEST_DATA) }
    replication: { mode: $(penv MODE) }
$(if [ -n "${SITE_PORTS:-}" ]; then
    echo "    failover:"
    echo "      site_listen: { east: \"127.0.0.1:${SITE_PORTS%,*}\", west: \"127.0.0.1:${SITE_PORTS#*,}\" }"
  fi)
coordinator:
  etcd: ["127.0.0.1:$eport"]
PLAN
    "$lb" --plan "$st/lifeboat.yaml" plan check >/dev/null
    for _ in $(seq 100); do
      curl -fsS "http://127.0.0.1:$eport/health" 2>/dev/null | grep -q '"health":"true"' && break
      sleep 0.1
    done
    for m in east west; do
      nohup "$lb" --plan "$st/lifeboat.yaml" agent --member "$m" >"$st/agent-$m.log" 2>&1 < /dev/null &
      echo $! > "$st/agent-$m.pid"
    done
    for _ in $(seq 200); do
      if grep -q '"event":"agent_sync_published"' "$st"/agent-*.log 2>/dev/null \
         || { [ "$(penv MODE)" = async ] && grep -q '"event":"agent_lead"' "$st"/agent-*.log 2>/dev/null; }; then
        [ -z "${SITE_PORTS:-}" ] && exit 0
        # both endpoints route to the leader: a write through each commits
        ok=0
        for p in ${SITE_PORTS//,/ }; do
          PGPASSWORD=$(cat "$st/pw") PGCONNECT_TIMEOUT=1 /usr/lib/postgresql/15/bin/psql -X -Atq -h 127.0.0.1 -p "$p" \
            -U "$(penv SUPERUSER)" -d postgres -c 'SELECT NOT pg_is_in_recovery()' 2>/dev/null | grep -q t && ok=$((ok + 1))
        done
        [ $ok = 2 ] && exit 0
      fi
      sleep 0.1
    done
    echo "no agent took the lease within 20 s" >&2; tail -3 "$st"/agent-*.log >&2; exit 1
    ;;
  down) stop_all ;;
  kill-primary-agent)
    export PGPASSWORD; PGPASSWORD=$(cat "$st/pw")
    for m in east west; do
      M=${m^^}
      r=$(/usr/lib/postgresql/15/bin/psql -X -Atq -h "$(penv "${M}_HOST")" -p "$(penv "${M}_PORT")" -U "$(penv SUPERUSER)" -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null || true)
      if [ "$r" = f ]; then kill -KILL "$(cat "$st/agent-$m.pid")"; exit 0; fi
    done
    echo "no primary found" >&2; exit 1
    ;;
  *) echo "usage: $0 up|down|kill-primary-agent PAIR_DIR" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Start and stop `lifeboat serve` on a pair made by ../shared/harness/pg-pair.sh, for the
# harness's trial.sh (--orchestrator-up / --orchestrator-down).
#   bench/lifeboat-orchestrator.sh up   PAIR_DIR   write a plan from PAIR_DIR/pair.env (members
#                                                  east/west, replication mode, the superuser's
#                                                  password in a 0600 file), start the daemon
#                                                  with a fresh state directory, return once a
#                                                  write through the endpoint commits
#   bench/lifeboat-orchestrator.sh down PAIR_DIR   SIGTERM the daemon (SIGKILL after 10 s)
# Environment: LISTEN (endpoint port, default 6432), LIFEBOAT (binary, default the release
# build), FAILOVER_EXTRA (more keys for the plan's failover mapping, flow style), EXTRA_SERVICES
# (more services, YAML indented by two spaces), LOGS (where
# each run's daemon log is kept, default PAIR_DIR.logs).
set -euo pipefail
action=${1:?up|down}
dir=${2:?PAIR_DIR}
dir=${dir%/}
here=$(cd "$(dirname "$0")/.." && pwd)
lb=${LIFEBOAT:-$here/target/release/lifeboat}
listen=${LISTEN:-6432}
st=$dir.lifeboat
PY=${PYTHON:-/usr/bin/python3}

stop() {
  [ -r "$st/pid" ] || return 0
  local pid; pid=$(cat "$st/pid")
  if [ -d "/proc/$pid" ] && grep -q "lifeboat" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$st/pid"
}

# The state directory is replaced at every start: keep each run's daemon log.
logs=${LOGS:-$dir.logs}
keep_log() {
  if [ -s "$st/daemon.log" ]; then
    mkdir -p "$logs"
    mv "$st/daemon.log" "$logs/daemon-$(date -u +%Y%m%dT%H%M%S%N).log"
  fi
}

case "$action" in
  up)
    stop
    env() { "$PY" -B -c 'import sys; sys.path.insert(0, sys.argv[1]); import pairctl; print(pairctl.load_env(sys.argv[2]).get(sys.argv[3], ""))' "$here/../shared/harness" "$dir/pair.env" "$1"; }
    keep_log
    rm -rf "$st"; mkdir -p "$st"; chmod 700 "$st"
    printf '%s\n' "$(env SUPERUSER_PASSWORD)" > "$st/pw"; chmod 600 "$st/pw"
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
      east: { host: $(env EAST_HOST), port: $(env EAST_PORT), user: $(env SUPERUSER), password: "file:$st/pw", data_dir: $(env EAST_DATA) }
      west: { host: $(env WEST_HOST), port: $(env WEST_PORT), user: $(env SUPERUSER), password: "file:$st/pw", data_dir: $(env WEST_DATA) }
    replication: { mode: $(env MODE) }
    failover: { listen: "127.0.0.1:$listen" ${FAILOVER_EXTRA:+, $FAILOVER_EXTRA} }
${EXTRA_SERVICES:-}
PLAN
    "$lb" --plan "$st/lifeboat.yaml" plan check >/dev/null
    nohup "$lb" --plan "$st/lifeboat.yaml" serve >"$st/daemon.log" 2>&1 < /dev/null &
    echo $! > "$st/pid"
    export PGPASSWORD; PGPASSWORD=$(cat "$st/pw")
    for _ in $(seq 300); do
      if /usr/lib/postgresql/15/bin/psql -X -Atq -h 127.0.0.1 -p "$listen" -U "$(env SUPERUSER)" -d postgres \
           -c "SELECT 1" >/dev/null 2>&1; then
        exit 0
      fi
      [ -d "/proc/$(cat "$st/pid")" ] || { tail -5 "$st/daemon.log" >&2; exit 1; }
      sleep 0.1
    done
    echo "the endpoint did not route within 30 s" >&2; tail -5 "$st/daemon.log" >&2; exit 1
    ;;
  down) stop; keep_log ;;
  *) echo "usage: $0 up|down PAIR_DIR" >&2; exit 2 ;;
esac

# A one-site plan with a PostgreSQL service `db`, for the bench scripts (source this file).
# pg_plan NAME HOST PORT DATA_DIR REPO_URL KEY_FILE [SERVICE_LINES] [BACKUPS_LINE]
#   SERVICE_LINES: more settings of `db` (indented by four spaces), default none;
#   BACKUPS_LINE: the `backups:` line, default one base-backup job `db-base`; "" for none.
pg_plan() {
  local backups='backups: { db-base: { service: db } }'
  [ $# -ge 8 ] && backups=$8
  cat <<YAML
name: $1
tiers: { gold: { rpo: 5m, rto: 15m } }
sites: [a]
services:
  db:
    kind: postgres
    tier: gold
    members: { a: { host: $2, port: $3, user: postgres, data_dir: $4 } }
YAML
  [ -n "${7:-}" ] && printf '%s\n' "$7"
  printf 'repositories: { main: { url: %s, key_file: %s } }\n' "$5" "$6"
  [ -n "$backups" ] && printf '%s\n' "$backups"
  return 0
}

#!/usr/bin/env bash
# `make db`: a PostgreSQL for development without Docker, like the compose db service:
# a cluster in FOLDER on PORT, database digitlab, the owner and the least-privilege dashboard role.
# Usage: deploy/local-db.sh FOLDER PORT
set -euo pipefail
folder=$(realpath -m "${1:?folder}") port=${2:?port}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$bin" ] && ! command -v initdb >/dev/null; then
  echo "PostgreSQL is not installed: apt-get install postgresql, or use docker compose up db" >&2
  exit 1
fi
PATH="$bin:$PATH"
as_postgres=()
if [ "$(id -u)" = 0 ]; then as_postgres=(runuser -u postgres --); fi  # initdb refuses root

if [ ! -f "$folder/PG_VERSION" ]; then
  mkdir -p "$folder"
  [ "$(id -u)" = 0 ] && chown postgres: "$folder"
  "${as_postgres[@]}" initdb -D "$folder" -U postgres --auth=trust -E UTF8 >/dev/null
fi
if ! pg_isready -q -h 127.0.0.1 -p "$port"; then
  "${as_postgres[@]}" pg_ctl -D "$folder" -l "$folder/server.log" -w \
    -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" start
fi
psql_admin=(psql -v ON_ERROR_STOP=1 -q -h 127.0.0.1 -p "$port" -U postgres)
if [ -z "$("${psql_admin[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = 'digitlab'")" ]; then
  "${psql_admin[@]}" -c "CREATE ROLE digitlab_owner LOGIN" -c "CREATE DATABASE digitlab OWNER digitlab_owner"
  "${psql_admin[@]}" -d digitlab -v role=digitlab_dashboard -v password=dev -v db=digitlab \
    -f "$(dirname "$0")/sql/dashboard-role.sql"
fi
echo "PostgreSQL on 127.0.0.1:$port (stop: pg_ctl -D $folder stop). Then:"
echo "  make migrate GRANT_TO=digitlab_dashboard DATABASE_URL=postgresql+psycopg2://digitlab_owner@127.0.0.1:$port/digitlab"
echo "  make dashboard DATABASE_URL=postgresql+psycopg2://digitlab_dashboard@127.0.0.1:$port/digitlab"

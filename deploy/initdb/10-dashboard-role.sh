#!/bin/sh
# Runs once, on the db container's first start (docker-entrypoint-initdb.d), as POSTGRES_USER.
# Creates the dashboard's login role; its table grants come with the table (make migrate).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v role="$DASHBOARD_DB_USER" -v password="$DASHBOARD_DB_PASSWORD" -v db="$POSTGRES_DB" \
    -f /deploy/sql/dashboard-role.sql

#!/bin/sh
# Runs once, when the database volume is first initialised (docker-entrypoint-initdb.d).
# Creates the login Grafana uses (GRAFANA_DB_USER, default grafana_reader): it can read
# MarketLake's tables and change nothing. Tables that `marketlake migrate` creates later are
# covered by the default privileges of POSTGRES_USER, who runs the migrations.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set reader="${GRAFANA_DB_USER:-grafana_reader}" \
    --set reader_password="$GRAFANA_DB_PASSWORD" <<'SQL'
CREATE ROLE :"reader" LOGIN PASSWORD :'reader_password';
ALTER ROLE :"reader" SET default_transaction_read_only = on;
ALTER ROLE :"reader" SET statement_timeout = '30s';
GRANT CONNECT ON DATABASE :"DBNAME" TO :"reader";
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
SQL

#!/bin/sh
# PostgreSQL of docker-compose.yml, first start only (docker-entrypoint-initdb.d): the
# owner of the schema and one login role per service, each with its password (scram,
# POSTGRES_HOST_AUTH_METHOD), and the database owned by the owner, as
# stack/postgres.py makes them natively. The grants are in migrations/0005.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v owner_pw="$PG_OWNER_PASSWORD" -v command_api_pw="$PG_COMMAND_API_PASSWORD" \
  -v projector_pw="$PG_PROJECTOR_PASSWORD" -v notifier_pw="$PG_NOTIFIER_PASSWORD" \
  -v query_api_pw="$PG_QUERY_API_PASSWORD" <<'SQL'
CREATE ROLE course_owner LOGIN PASSWORD :'owner_pw';
CREATE ROLE command_api LOGIN PASSWORD :'command_api_pw';
CREATE ROLE projector LOGIN PASSWORD :'projector_pw';
CREATE ROLE notifier LOGIN PASSWORD :'notifier_pw';
CREATE ROLE query_api LOGIN PASSWORD :'query_api_pw';
CREATE DATABASE coursesignup OWNER course_owner;
SQL

#!/usr/bin/env bash
# Entrypoint of the local PostgreSQL test image: the parts of the official image's docker-entrypoint.sh that
# pgwi's tests rely on (POSTGRES_USER/PASSWORD/DB, init scripts, the same readiness messages).
set -Eeuo pipefail

# shellcheck disable=SC2012 # the directories are PostgreSQL's major versions: digits only
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
export PATH="$bin:$PATH"
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

if [[ "${1:-}" == -* ]]; then
  set -- postgres "$@"
fi

if [[ "$(id -u)" == 0 ]]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [[ "$1" == postgres && ! -s "$PGDATA/PG_VERSION" ]]; then
  if [[ -z "${POSTGRES_PASSWORD:-}" ]]; then
    echo "error: POSTGRES_PASSWORD must be set (this image never uses trust for TCP)" >&2
    exit 1
  fi
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s' "$POSTGRES_PASSWORD") \
    --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"

  # The temporary server logs to stdout, as in the official image.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start 2>&1
  export PGUSER="$POSTGRES_USER" PGPASSWORD="$POSTGRES_PASSWORD" PGHOST=/var/run/postgresql
  if [[ "$POSTGRES_DB" != postgres ]]; then
    psql -v ON_ERROR_STOP=1 --dbname postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
  fi
  # shellcheck source=/dev/null # init scripts are the caller's
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) echo "running $f"; if [[ -x "$f" ]]; then "$f"; else . "$f"; fi ;;
      *.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 --dbname "$POSTGRES_DB" -f "$f" ;;
      *) ;;
    esac
  done
  unset PGPASSWORD
  pg_ctl -D "$PGDATA" -m fast -w stop 2>&1
  echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@" -D "$PGDATA"

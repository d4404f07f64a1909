#!/bin/sh
# Entrypoint of the bench's PostgreSQL image: the test image's own entrypoint, with max_connections raised
# for the final server (the arguments are `postgres [-c ...]` or only `-c ...` options).
set -eu
case "${1:-}" in
  postgres | -*) set -- "$@" -c max_connections=300 ;;
  *) ;;
esac
exec /usr/local/bin/docker-entrypoint.sh "$@"

#!/bin/sh
# First start: create the cluster in $PGDATA with the official image's variables (superuser
# POSTGRES_USER with POSTGRES_PASSWORD, database POSTGRES_DB), password logins over TCP.
# Every start: run the server in the foreground (as PID 1, so it gets the stop signal).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=${POSTGRES_USER}}"

if [ "${1:-postgres}" != postgres ]; then
    exec "$@"
fi
[ "$#" -gt 0 ] && shift

if [ ! -s "${PGDATA}/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "gradlab-postgres: set POSTGRES_PASSWORD to initialise the database" >&2
        exit 1
    fi
    password_file="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD}" > "${password_file}"
    initdb --pgdata="${PGDATA}" --username="${POSTGRES_USER}" --pwfile="${password_file}" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8
    rm -f "${password_file}"
    # initdb allows TCP from localhost only; the other containers connect over the network.
    printf 'host all all all scram-sha-256\n' >> "${PGDATA}/pg_hba.conf"
    if [ "${POSTGRES_DB}" != postgres ]; then
        pg_ctl --pgdata="${PGDATA}" --options="-c listen_addresses=''" --wait start
        createdb --username="${POSTGRES_USER}" "${POSTGRES_DB}"
        pg_ctl --pgdata="${PGDATA}" --mode=fast --wait stop
    fi
fi
exec postgres -D "${PGDATA}" -c listen_addresses='*' "$@"

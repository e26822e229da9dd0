#!/bin/sh
# PostgreSQL for a swarmbinder stack.
#
# First start (an empty $PGDATA): initdb with the owner POSTGRES_USER, whose password is read
# from POSTGRES_PASSWORD_FILE (a Swarm secret), then one database per name in
# POSTGRES_DATABASES, each owned by that user. Every start rewrites pg_hba.conf: password logins
# (scram-sha-256) from the networks this container is on ("samenet") and the local socket only;
# the stack puts this service on an internal network of its own, so that is Binder and the hub.
#
# The server runs in the foreground under this shell, which turns SIGTERM (docker stop, a Swarm
# update) into PostgreSQL's fast shutdown: open sessions are ended and the data is checkpointed,
# where a plain SIGTERM would wait for every client to disconnect (smart shutdown) until Docker
# loses patience and kills it.
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data}
PGBIN=/usr/local/lib/postgresql-bin
POSTGRES_USER=${POSTGRES_USER:-binder}
POSTGRES_DATABASES=${POSTGRES_DATABASES:-binder jupyterhub}
PASSWORD_FILE=${POSTGRES_PASSWORD_FILE:-}

fail() {
    echo "postgres-entrypoint: $*" >&2
    exit 2
}

as_postgres() {
    setpriv --reuid=postgres --regid=postgres --init-groups "$@"
}

write_access_rules() {
    # The socket: the OS user postgres may log in as the owner (docker exec -u postgres ...
    # psql, for operators); TCP: the owner with a password, from the networks this container
    # is on.
    cat > "$PGDATA/pg_hba.conf" <<HBA
# Rewritten at every start by postgres-entrypoint.sh.
local   all   $POSTGRES_USER   peer map=operator
host    all   $POSTGRES_USER   samenet   scram-sha-256
HBA
    cat > "$PGDATA/pg_ident.conf" <<IDENT
# Rewritten at every start by postgres-entrypoint.sh.
operator   postgres   $POSTGRES_USER
IDENT
    chown postgres:postgres "$PGDATA/pg_hba.conf" "$PGDATA/pg_ident.conf"
}

case "$POSTGRES_USER" in
    "" | *[!a-z0-9_]* | [0-9]*) fail "POSTGRES_USER=$POSTGRES_USER: use lower-case letters, digits and _" ;;
esac
for db in $POSTGRES_DATABASES; do
    case "$db" in
        *[!a-z0-9_]* | [0-9]*) fail "POSTGRES_DATABASES: $db: use lower-case letters, digits and _" ;;
    esac
done
[ -n "$PASSWORD_FILE" ] || fail "POSTGRES_PASSWORD_FILE must name a file holding the password"
[ -r "$PASSWORD_FILE" ] || fail "POSTGRES_PASSWORD_FILE=$PASSWORD_FILE cannot be read"
# Hex from `swarmbinder secrets`; anything with a quote would break the SQL below.
case "$(cat "$PASSWORD_FILE")" in
    "" | *"'"* | *"\\"*) fail "the password in $PASSWORD_FILE is empty or holds a quote or backslash" ;;
esac

mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"

# Made only when the databases exist too: a first start stopped half-way is finished by the next.
INITIALISED="$PGDATA/swarmbinder-initialised"
if [ ! -e "$INITIALISED" ]; then
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        echo "postgres-entrypoint: initialising $PGDATA for $POSTGRES_USER"
        # initdb reads the password from a file only postgres can read, never from arguments.
        pwfile=$(mktemp)
        tr -d '\n' < "$PASSWORD_FILE" > "$pwfile"
        chown postgres "$pwfile"
        chmod 600 "$pwfile"
        as_postgres "$PGBIN/initdb" -D "$PGDATA" --username="$POSTGRES_USER" \
            --pwfile="$pwfile" --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 \
            --locale=C.UTF-8 >/dev/null
        rm -f "$pwfile"
    fi
    write_access_rules
    # The databases are made by a server on a private socket only, before anything can
    # connect (or the healthcheck, which asks the usual socket, calls it ready).
    setup_socket=$(mktemp -d)
    chown postgres "$setup_socket"
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -w \
        -o "-c listen_addresses='' -c unix_socket_directories=$setup_socket" start >/dev/null
    for db in $POSTGRES_DATABASES; do
        exists=$(as_postgres "$PGBIN/psql" -h "$setup_socket" -U "$POSTGRES_USER" -d postgres \
            -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'")
        if [ "$exists" != 1 ]; then
            as_postgres "$PGBIN/psql" -h "$setup_socket" -q -v ON_ERROR_STOP=1 \
                -U "$POSTGRES_USER" -d postgres \
                -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
            echo "postgres-entrypoint: created database $db"
        fi
    done
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    rmdir "$setup_socket"
    touch "$INITIALISED"
fi

write_access_rules

# Not through as_postgres: a backgrounded function is a subshell, and $! would be its pid.
setpriv --reuid=postgres --regid=postgres --init-groups "$PGBIN/postgres" -D "$PGDATA" \
    -c listen_addresses='*' -c password_encryption=scram-sha-256 \
    -c unix_socket_directories=/run/postgresql "$@" &
server=$!
trap 'kill -INT "$server" 2>/dev/null || true' TERM INT
# wait returns early when a trapped signal arrives: wait again until the server has exited.
status=0
while kill -0 "$server" 2>/dev/null; do
    if wait "$server"; then status=0; else status=$?; fi
done
exit "$status"

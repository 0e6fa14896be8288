#!/usr/bin/env bash
# A private PostgreSQL cluster for the tests (the app itself defaults to SQLite).
#
#   postgres.sh start   use $DATABASE_URL if it is a postgresql URL that answers; else
#                       start (or reuse) our own cluster. Prints shell lines to eval:
#                       `export CLONEBOT_TEST_POSTGRES_URL=...`, plus
#                       `CLONEBOT_POSTGRES_STARTED=1` if this call launched the server.
#   postgres.sh stop    stop our server, but only if a `start` launched it.
#   postgres.sh env     print `export CLONEBOT_TEST_POSTGRES_URL=...` for the one in use.
#
# Our cluster has its own data dir, port and socket dir, so it runs next to Debian's
# system cluster (port 5432), which this script never uses nor stops. It only holds
# throw-away test data: trust auth, listening on 127.0.0.1 only.
# DATABASE_URL is never exported: it would switch the app's own default database.
set -euo pipefail

NAME=clonebot-postgres
DATA=/var/lib/$NAME
SOCKDIR=/run/$NAME
LOG=/run/$NAME.log
STATE=/run/$NAME.started-by-us   # exists while a server launched by `start` may run
PORT=55432                       # uncommon: not the system cluster's 5432
DB=clonebot_test
OUR_URL=postgresql+asyncpg://postgres@127.0.0.1:$PORT/$DB

say() { echo "postgres.sh: $*" >&2; }
show_log() {
    say "$1; last lines of $LOG:"
    tail -n 20 "$LOG" >&2 2>/dev/null || true
}

# The server binaries' dir: the data dir's own major version if it is installed, else
# the newest (Debian 12 has /usr/lib/postgresql/15/bin; no version is hard-coded).
bindir() {
    local v
    v=$(cat "$DATA/PG_VERSION" 2>/dev/null) && [[ -x /usr/lib/postgresql/$v/bin/postgres ]] &&
        { echo "/usr/lib/postgresql/$v/bin"; return; }
    v=$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n 1) ||
        { say "no PostgreSQL server installed (see scripts/ensure-deps.sh)"; exit 1; }
    dirname "$v"
}

# The server refuses to run as root. cd /: the postgres user may not enter our cwd.
as_postgres() { (cd / && runuser -u postgres -- "$@"); }

# SQLAlchemy's postgresql+asyncpg://u:p@h:port/db -> libpq's postgresql://u:p@h:port/db.
# The query string is dropped: driver options (e.g. asyncpg's ssl=) are not libpq's.
libpq_url() { local u=${1%%\?*}; echo "postgresql://${u#*://}"; }

# Bounded (-w: never prompt for a password; connect_timeout): a hung server must not
# hang CI. psql, not pg_isready: this also checks the credentials and the database.
answers() {
    [[ $1 =~ ^postgres(ql)?(\+[A-Za-z0-9_]+)?:// ]] || return 1
    PGCONNECT_TIMEOUT=5 timeout 10 psql -X -w -Atq -d "$(libpq_url "$1")" -c 'select 1' \
        </dev/null >/dev/null 2>&1
}

# Print the postmaster's pid if our data dir's postmaster.pid names a live postgres
# (not a zombie: an exited server waits a while here to be reaped by pid 1).
live_pid() {
    local pid comm state
    pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null) || return 1
    read -r _ comm state _ <"/proc/$pid/stat" 2>/dev/null || return 1
    [[ $comm == "(postgres)" && $state != Z ]] && echo "$pid"
}

# Create the cluster once. The marker is written last, so a cluster whose initdb was
# interrupted is made again from scratch (as is one whose version is not installed).
init_cluster() {
    local bin=$1 v
    v=$(cat "$DATA/PG_VERSION" 2>/dev/null) || true
    [[ -e $DATA/clonebot-initdb-done && $bin == "/usr/lib/postgresql/$v/bin" ]] && return
    say "creating cluster in $DATA"
    rm -rf "$DATA"
    install -d -o postgres -g postgres -m 700 "$DATA"
    # Logged to stderr: stdout carries only the lines to eval.
    as_postgres "$bin/initdb" -D "$DATA" -U postgres --auth=trust --no-locale -E UTF8 \
        --no-instructions >&2
    touch "$DATA/clonebot-initdb-done"
}

launch() {
    local bin
    bin=$(bindir)
    init_cluster "$bin"
    # Not running (checked by the caller): a postmaster.pid or socket lock file left by
    # a crash may name a pid now reused by another process, and the server would refuse
    # to start. /run is a tmpfs, so the socket dir and log are made anew after a reboot.
    rm -f "$DATA/postmaster.pid"
    rm -rf "$SOCKDIR"
    install -d -o postgres -g postgres -m 755 "$SOCKDIR"
    touch "$LOG" && chown postgres: "$LOG"
    touch "$STATE"
    # Settings on the command line, not in the cluster's files, so a change here needs
    # no new cluster. pg_ctl detaches the server (own session, output to $LOG).
    # synchronous_commit=off: faster tests; a crash loses only the last commits.
    local opts="-c listen_addresses=127.0.0.1 -c port=$PORT"
    opts+=" -c unix_socket_directories=$SOCKDIR -c synchronous_commit=off"
    if ! as_postgres "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 30 -o "$opts" start >&2; then
        show_log "PostgreSQL did not start"
        cmd_stop
        exit 1
    fi
}

# The test database (owned by the postgres superuser that initdb made), if missing.
ensure_db() {
    local psql=(psql -X -w -Atq -h 127.0.0.1 -p "$PORT" -U postgres -d postgres)
    [[ $("${psql[@]}" -c "select 1 from pg_database where datname = '$DB'") == 1 ]] ||
        "${psql[@]}" -c "create database $DB" >&2
}

cmd_start() {
    if [[ -n ${DATABASE_URL:-} ]]; then
        if answers "$DATABASE_URL"; then
            say "using DATABASE_URL (${DATABASE_URL%%://*}://...)"
            printf 'export CLONEBOT_TEST_POSTGRES_URL=%q\n' "$DATABASE_URL"
            return
        fi
        say "DATABASE_URL is not a postgresql URL that answers; using our own cluster"
    fi
    local pid started=
    if pid=$(live_pid); then
        say "reusing our PostgreSQL (pid $pid)"
    else
        say "starting PostgreSQL on 127.0.0.1:$PORT (log: $LOG)"
        launch
        started=1
    fi
    if ! ensure_db || ! answers "$OUR_URL"; then
        show_log "PostgreSQL does not answer on 127.0.0.1:$PORT"
        [[ -z $started ]] || cmd_stop
        exit 1
    fi
    echo "export CLONEBOT_TEST_POSTGRES_URL=$OUR_URL"
    [[ -z $started ]] || echo "CLONEBOT_POSTGRES_STARTED=1"
}

cmd_stop() {
    if [[ ! -e $STATE ]]; then
        say "no PostgreSQL started by us; nothing to stop"
        return
    fi
    local pid
    if pid=$(live_pid); then
        say "stopping PostgreSQL (pid $pid)"
        # fast: roll back open sessions (a test may have left one) and shut down cleanly.
        if ! as_postgres "$(bindir)/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >&2; then
            say "PostgreSQL still runs after 30 s; see $LOG"
            exit 1
        fi
    fi
    rm -f "$STATE"
}

cmd_env() {
    if [[ -n ${DATABASE_URL:-} ]] && answers "$DATABASE_URL"; then
        printf 'export CLONEBOT_TEST_POSTGRES_URL=%q\n' "$DATABASE_URL"
    else
        echo "export CLONEBOT_TEST_POSTGRES_URL=$OUR_URL"
    fi
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac

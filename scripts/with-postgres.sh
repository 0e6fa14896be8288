#!/usr/bin/env bash
# Run a command with a PostgreSQL for the tests: start it (or use a working
# $DATABASE_URL), export CLONEBOT_TEST_POSTGRES_URL, run the command, then stop the
# server if we started it, whatever happened. Exits with the command's status (or
# stop's, if only that failed).
set -euo pipefail
cd "$(dirname "$0")/.."

# Sets CLONEBOT_TEST_POSTGRES_URL [and CLONEBOT_POSTGRES_STARTED]; assigned first so a
# failure stops us.
server=$(bash scripts/postgres.sh start)
eval "$server"
cleanup() {
    local rc=$?
    if [[ -n ${CLONEBOT_POSTGRES_STARTED:-} ]]; then
        bash scripts/postgres.sh stop || ((rc)) || rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # exit (and so clean up) on ^C too

"$@"

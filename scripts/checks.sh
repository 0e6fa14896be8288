#!/usr/bin/env bash
# Lint, type-check and (unless called as `checks.sh lint`) run the tests.
# Every step runs even after a failure, so one run shows all problems; the exit
# status is the first failure's. Tests need DOCKER_HOST: see scripts/with-docker.sh.
set -uo pipefail
cd "$(dirname "$0")/.." || exit

status=0
step() {
    echo "+ $*" >&2
    "$@"
    local rc=$?
    # pytest exits 5 when it collects no tests: not a failure (yet).
    [[ $1 == .venv/bin/pytest && $rc == 5 ]] && rc=0
    ((status)) || status=$rc
}

step .venv/bin/ruff check .
step .venv/bin/ruff format --check .
step .venv/bin/mypy
if [[ ${1:-} != lint ]]; then
    # The tests copy this static busybox into images they build.
    CLONEBOT_BUSYBOX=/bin/busybox step .venv/bin/pytest -q
fi
exit "$status"

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
    export CLONEBOT_BUSYBOX=/bin/busybox
    # Most of a test's time is spent waiting on the engine, so they run on parallel
    # workers (pytest-xdist; CLONEBOT_TEST_WORKERS, default 4 on any machine), groups of
    # tests that share one costly fixture on one worker; then those marked `alone` (they
    # watch the whole engine or the machine, or load it) one after another, those that use
    # engines of their own only beside them (tests/conftest.py puts them in two groups).
    step .venv/bin/pytest -q -n "${CLONEBOT_TEST_WORKERS:-4}" \
        --dist loadgroup --durations=10 -m "not alone"
    step .venv/bin/pytest -q -n 2 --dist loadgroup --durations=10 -m alone
fi
exit "$status"

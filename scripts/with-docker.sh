#!/usr/bin/env bash
# Run a command against the test engine: start it (or use a working $DOCKER_HOST),
# build the test images, run the command, then stop the engine if we started it,
# whatever happened. Exits with the command's status (or stop's, if only that failed).
set -euo pipefail
cd "$(dirname "$0")/.."

# Sets DOCKER_HOST [and CLONEBOT_DOCKER_STARTED]; assigned first so a failure stops us.
engine=$(bash scripts/dockerd.sh start)
eval "$engine"
cleanup() {
    local rc=$?
    if [[ -n ${CLONEBOT_DOCKER_STARTED:-} ]]; then
        bash scripts/dockerd.sh stop || ((rc)) || rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # exit (and so clean up) on ^C too

bash scripts/build-test-images.sh
"$@"

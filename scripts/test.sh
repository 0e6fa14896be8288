#!/usr/bin/env bash
# `make test` (and CI): dependencies, then lint, type-check and tests against the
# private Docker engine, which is stopped again afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
exec bash scripts/with-docker.sh bash scripts/checks.sh

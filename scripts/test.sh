#!/usr/bin/env bash
# `make test` (and CI): dependencies, then lint, type-check and tests against the
# private Docker engine and PostgreSQL, each stopped again afterwards if we started it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
exec bash scripts/with-docker.sh bash scripts/with-postgres.sh bash scripts/checks.sh

# Developer and CI entry points; the work is in scripts/*.sh.
#   make test                  lint, type-check and tests (what CI runs: .ci/run)
#   make lint                  ruff and mypy only
#   make run ARGS="clone prod" run the clonebot CLI (default: `clonebot demo`, then `clonebot serve`)
#   make bench                 benchmarks (python -m bench)
#   make clean-docker          stop the private Docker engine that `make run` leaves up
#   make image                 the production images (Dockerfile, deploy/compose.yaml)
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.PHONY: test lint run bench clean-docker deps image

ARGS ?= serve

test:
	bash scripts/test.sh

lint: deps
	bash scripts/checks.sh lint

# Leaves the engine running: the user goes on working with the environments it holds.
# `make clean-docker` stops it. (An engine in $DOCKER_HOST that answers is used instead.)
# `serve` (the default) first makes sure the demo environment is there, unless CLONEBOT_DEMO=0;
# a demo that cannot be made is said, and serve starts anyway.
run: deps
	engine=$$(bash scripts/dockerd.sh start); eval "$$engine"; \
	if [[ "$(ARGS)" == serve && "$${CLONEBOT_DEMO:-1}" != 0 ]]; then \
		.venv/bin/clonebot demo || echo "make run: no demo environment (see above)" >&2; fi; \
	exec .venv/bin/clonebot $(ARGS)

bench: deps
	bash scripts/with-docker.sh .venv/bin/python -m bench

clean-docker:
	bash scripts/dockerd.sh stop

# clonebot/clonebot and clonebot/postgres:15 on the engine in $DOCKER_HOST (else the private
# one, left running as by `make run`); the base is made with debootstrap when the engine lacks it
image: deps
	engine=$$(bash scripts/dockerd.sh start); eval "$$engine"; \
	bash scripts/build-image.sh --local-base

deps:
	bash scripts/ensure-deps.sh

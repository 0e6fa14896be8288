#!/usr/bin/env bash
# Build clonebot's container images: clonebot itself (the Dockerfile at the root: the bot,
# HAProxy, and what the copy helper image is made from) and the PostgreSQL of the compose
# stack (deploy/postgres/Dockerfile). Both start from the same Debian base.
#
#   build-image.sh [--local-base]
#
#   --local-base  when the engine lacks the base image, make it here instead of pulling it:
#                 debootstrap (minbase) from the Debian mirror, then `docker import` under
#                 the base's tag. Slow the first time (a few minutes); kept afterwards.
#                 For an engine that reaches no registry (the tests' engine).
#
# Settings (environment):
#   BASE             the base image                    (default debian:bookworm-slim)
#   CLONEBOT_IMAGE   the tag of clonebot's image       (default clonebot/clonebot:latest)
#   POSTGRES_IMAGE   the tag of the PostgreSQL image   (default clonebot/postgres:15)
#   DEBIAN_MIRROR    the mirror debootstrap reads      (default http://deb.debian.org/debian)
#   CACHE_PREFIX     when set (e.g. clonebot-cache), the slow stages (Debian's packages, the
#                    dependencies' wheels) are also tagged PREFIX/clonebot:deps, :runtime and
#                    PREFIX/postgres:server: a later build starts from them even after the
#                    images are removed (the tests remove theirs after each run)
#   BUILD_CA_FILES   certificates pip trusts while building, beside Debian's (default: the
#                    host's own additions, /usr/local/share/ca-certificates/*.crt, e.g. a
#                    TLS-intercepting proxy's); "none" for none. They stay in the build stage.
#
# Builds run with --network host: an engine without NAT (the tests' own) still lets apt and
# pip reach the mirrors the host reaches. Nothing else needs the network.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${BASE:-debian:bookworm-slim}
CLONEBOT_IMAGE=${CLONEBOT_IMAGE:-clonebot/clonebot:latest}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-clonebot/postgres:15}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { echo "build-image.sh: $*" >&2; }

# What a slim image leaves out (debuerreotype's "slimify" does much the same): a container
# reads no manual, and apt's lists are fetched again by any build that installs.
SLIM_EXCLUDES=(
    --exclude=./var/cache/apt/archives/*.deb --exclude=./var/lib/apt/lists/*
    --exclude=./usr/share/doc/* --exclude=./usr/share/man/* --exclude=./usr/share/info/*
    --exclude=./usr/share/locale/*
)

local_base() {
    docker image inspect "$BASE" >/dev/null 2>&1 && return
    local suite=${BASE#*:}
    suite=${suite%-slim}
    command -v debootstrap >/dev/null || {
        say "debootstrap is missing to make $BASE (scripts/ensure-deps.sh installs it)"
        exit 1
    }
    work=$(mktemp -d /tmp/clonebot-base.XXXXXX)
    # a failed debootstrap may leave /proc or /sys mounted in the root: unmount before rm
    trap 'for m in $(grep -o " $work/[^ ]*" /proc/mounts | sort -r); do umount -l "$m"; done
          rm -rf "$work"' EXIT
    say "making $BASE with debootstrap ($suite, minbase) from $DEBIAN_MIRROR (a few minutes, once)"
    debootstrap --variant=minbase "$suite" "$work/root" "$DEBIAN_MIRROR" >"$work/log" 2>&1 || {
        tail -n 20 "$work/log" >&2
        exit 1
    }
    tar -C "$work/root" "${SLIM_EXCLUDES[@]}" --numeric-owner -c . |
        docker import -c 'CMD ["bash"]' - "$BASE" >/dev/null
    say "imported $BASE"
}

build() {
    local tag=$1 dockerfile=$2 context=$3
    shift 3
    say "building $tag from $dockerfile on $BASE"
    # the engine may be older than the client and have no BuildKit: the classic builder
    DOCKER_BUILDKIT=0 docker build --network host --force-rm --build-arg "BASE=$BASE" "$@" \
        -f "$dockerfile" -t "$tag" "$context" >&2
}

build_ca() {
    local files=${BUILD_CA_FILES:-$(compgen -G '/usr/local/share/ca-certificates/*.crt' || true)}
    [[ $files == none || -z $files ]] || cat $files
}

[[ ${1:-} == --local-base ]] && local_base
ca=$(build_ca)
if [[ -n ${CACHE_PREFIX:-} ]]; then
    for stage in deps runtime; do
        build "$CACHE_PREFIX/clonebot:$stage" Dockerfile . --target "$stage" --build-arg "BUILD_CA=$ca"
    done
    build "$CACHE_PREFIX/postgres:server" deploy/postgres/Dockerfile deploy/postgres --target server
fi
build "$CLONEBOT_IMAGE" Dockerfile . --build-arg "BUILD_CA=$ca"
build "$POSTGRES_IMAGE" deploy/postgres/Dockerfile deploy/postgres

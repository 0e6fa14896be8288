#!/usr/bin/env bash
# Build the images the tests and benchmarks use, only when missing (needs DOCKER_HOST).
# Never pulls: the test engine has no network. Both are imported from root filesystems
# made from the host's own files:
#   clonebot-test/busybox  the static busybox (package busybox-static): shells, httpd
#   clonebot-test/haproxy  that busybox plus the host's HAProxy and the libraries it links,
#                          for the tests of an HAProxy that runs in a container
#   clonebot-test/python   that busybox plus Debian's python3 (its standard library and the
#                          libraries it links): web nodes that speak WebSocket (tests/ws_echo.py)
set -euo pipefail

BUSYBOX=clonebot-test/busybox:latest
HAPROXY=clonebot-test/haproxy:latest
PYTHON=clonebot-test/python:latest

: "${DOCKER_HOST:?set DOCKER_HOST (see scripts/dockerd.sh env)}"

busybox_root() {
    local root=$1
    mkdir -p "$root"/{bin,etc,root,var/www,tmp}
    chmod 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    # One symlink per applet (sh, httpd, wget, ...), all in /bin: PATH includes it.
    for applet in $(/bin/busybox --list); do
        [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
    done
    cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
    cat >"$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
}

haproxy_root() {
    local root=$1 binary lib
    binary=$(command -v haproxy)
    mkdir -p "$root/usr/sbin"
    cp "$binary" "$root/usr/sbin/haproxy"
    # every library it links, at the path the loader looks for it (symlinks resolved)
    for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

# every library the given programs link, at the path the loader looks for it (symlinks resolved)
copy_libraries() {
    local root=$1 lib
    shift
    for lib in $(ldd "$@" 2>/dev/null | awk '/=>/ {print $3} /ld-linux/ {print $1}' |
        grep '^/' | sort -u); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

python_root() {
    local root=$1 binary stdlib
    binary=$(readlink -f /usr/bin/python3) # Debian's (package python3), not a virtualenv's
    stdlib=$("$binary" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
    mkdir -p "$root/usr/bin" "$root$stdlib"
    cp "$binary" "$root/usr/bin/python3"
    # the standard library without its tests, tools and caches: about 40 MB
    tar -C "$stdlib" --exclude=./test --exclude=./idlelib --exclude=./tkinter \
        --exclude=./turtledemo --exclude=./ensurepip --exclude=./lib2to3 \
        --exclude='./config-*' --exclude=__pycache__ --exclude=./site-packages \
        --exclude=./dist-packages -c . | tar -C "$root$stdlib" -x
    copy_libraries "$root" "$binary" "$stdlib"/lib-dynload/*.so
}

import() {
    local image=$1 root=$2 cmd=$3
    echo "build-test-images.sh: importing $image" >&2
    tar -C "$root" --numeric-owner --owner=0 --group=0 -c . |
        docker import \
            -c 'ENV PATH=/bin:/usr/bin:/sbin:/usr/sbin' \
            -c "CMD $cmd" \
            - "$image" >/dev/null
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! docker image inspect "$BUSYBOX" >/dev/null 2>&1; then
    busybox_root "$work/busybox"
    import "$BUSYBOX" "$work/busybox" '["/bin/sh"]'
fi
if ! docker image inspect "$HAPROXY" >/dev/null 2>&1; then
    busybox_root "$work/haproxy"
    haproxy_root "$work/haproxy"
    import "$HAPROXY" "$work/haproxy" '["/usr/sbin/haproxy", "-v"]'
fi
if ! docker image inspect "$PYTHON" >/dev/null 2>&1; then
    busybox_root "$work/python"
    python_root "$work/python"
    import "$PYTHON" "$work/python" '["/usr/bin/python3"]'
fi

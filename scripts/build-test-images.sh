#!/usr/bin/env bash
# Build the images the tests and benchmarks use, only when missing (needs DOCKER_HOST).
# Never pulls: the test engine has no network. The busybox image is imported from a
# root filesystem made from the host's static busybox (package busybox-static).
set -euo pipefail

IMAGE=clonebot-test/busybox:latest

: "${DOCKER_HOST:?set DOCKER_HOST (see scripts/dockerd.sh env)}"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

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

echo "build-test-images.sh: importing $IMAGE" >&2
tar -C "$root" --numeric-owner --owner=0 --group=0 -c . |
    docker import \
        -c 'ENV PATH=/bin:/usr/bin:/sbin:/usr/sbin' \
        -c 'CMD ["/bin/sh"]' \
        - "$IMAGE" >/dev/null

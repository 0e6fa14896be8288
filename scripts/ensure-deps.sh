#!/usr/bin/env bash
# Install what tests, benchmarks and `make run` need, skipping whatever is already there,
# so a second run takes well under a second. Needs root for apt-get (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, each checked by a file it installs. Check exact paths: a newer docker
# CLI in /usr/local/bin does not bring an engine, and /bin/busybox may be a dynamic one.
declare -A PACKAGES=(
    [/usr/sbin/dockerd]=docker.io
    [/bin/busybox]=busybox-static            # copied into the test image: must be static
    [/usr/bin/docker-compose]=docker-compose # Compose 1.29, used by tests
    [/usr/bin/wrk]=wrk                       # used by benchmarks
    [/usr/sbin/debootstrap]=debootstrap      # builds bench freeze-postgres's PostgreSQL image
    [/usr/sbin/haproxy]=haproxy              # the router (data plane), tested for real
    [/bin/ip]=iproute2                       # scripts/dockerd.sh makes its own bridge
    [/usr/bin/rsync]=rsync [/usr/bin/getfacl]=acl [/usr/bin/getfattr]=attr # the copy helper (services/volumes.py)
    [/usr/bin/chromium]=chromium [/usr/bin/chromedriver]=chromium-driver # the playground's browser tests
    [/usr/bin/curl]=curl [/usr/bin/openssl]=openssl # the TLS clients of the HTTPS tests
    [/usr/bin/python3]=python3               # copied into the WebSocket test image (build-test-images.sh)
    [/usr/bin/pebble]=pebble                 # an ACME server (and its DNS) for the ACME tests
    [/usr/sbin/sshd]=openssh-server          # the fleet hosts' sshd, for ssh:// engines (tests/fleet)
)
missing=()
for path in "${!PACKAGES[@]}"; do
    [[ -x $path ]] || missing+=("${PACKAGES[$path]}")
done
# A dynamically linked /bin/busybox (package busybox) would not run inside the image.
if [[ -x /bin/busybox ]] && ! dpkg -s busybox-static >/dev/null 2>&1; then
    missing+=(busybox-static)
fi
# The tests' PostgreSQL server (scripts/postgres.sh), found under its version's dir
# (15 on Debian 12). Installing it may create Debian's own cluster: we leave that alone.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
# Debian's python3 needs python3-venv for `python3 -m venv` (ensurepip).
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)

if ((${#missing[@]})); then
    echo "ensure-deps.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # no package may start a service on this host (openssh-server would start an sshd on
    # port 22): Debian's policy-rc.d says no, for the install only, unless one is there
    made_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [[ -z $made_policy ]] || rm -f /usr/sbin/policy-rc.d
fi

# The virtualenv, reinstalled only when pyproject.toml changed since the last install.
if [[ ! -x .venv/bin/python ]]; then
    echo "ensure-deps.sh: creating .venv" >&2
    python3 -m venv .venv
fi
if [[ ! .venv/.installed -nt pyproject.toml ]]; then
    echo "ensure-deps.sh: installing clonebot[dev] into .venv" >&2
    # Show pip's output only if it fails (it warns noisily about editable installs).
    if ! out=$(.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1); then
        echo "$out" >&2
        exit 1
    fi
    touch .venv/.installed
fi

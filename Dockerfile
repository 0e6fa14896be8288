# clonebot's image: the bot (installed from its wheel), HAProxy, and the programs the copy
# helper image is made from on the Docker host it drives (services/volumes.py copies the
# static busybox, rsync, perl, getfacl/setfacl, getfattr/setfattr and find into it).
#
#   scripts/build-image.sh            builds it (and the stack's PostgreSQL image)
#   docker build -t clonebot/clonebot .
#
# It runs as the user clonebot, who reaches the Docker engine through its socket
# (/var/run/docker.sock, mounted): give the container the socket's group, e.g. compose's
# `group_add: ["${DOCKER_GID}"]` with DOCKER_GID=$(stat -c %g /var/run/docker.sock).
# Whoever reaches that socket is root on the Docker host, as clonebot needs to be.
#
# Stages, slowest and least often changed first, so that a change of clonebot's code
# rebuilds only its own wheel and its install: deps (the dependencies' wheels), builder
# (clonebot's wheel), runtime (Debian's packages and the dependencies), then the image.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS deps
# the classic builder keeps the stages' images, untagged: the label finds them for removal
LABEL org.clonebot.stage=builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# certificates to trust beyond Debian's (a TLS-intercepting proxy on the way to PyPI):
# scripts/build-image.sh passes the host's own additions; they stay in this stage
ARG BUILD_CA=""
RUN if [ -n "$BUILD_CA" ]; then \
        printf '%s\n' "$BUILD_CA" >/usr/local/share/ca-certificates/build.crt \
        && update-ca-certificates >/dev/null; \
    fi
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /build/venv
WORKDIR /src
# the dependencies' wheels (no dev extras), from pyproject.toml alone
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" >requirements.txt \
    && /build/venv/bin/pip wheel --no-cache-dir --wheel-dir /wheels/deps -r requirements.txt

FROM deps AS builder
# clonebot's own wheel
COPY bot bot
COPY services services
COPY storage storage
RUN /build/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels/clonebot .

FROM ${BASE} AS runtime
LABEL org.clonebot.stage=runtime
# python3-venv: the venv below; haproxy: the router; busybox-static, rsync, acl, attr (and
# perl-base, findutils, libc-bin's ldd, all in the base): the copy helper's parts
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates haproxy busybox-static rsync acl attr \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --user-group --home-dir /var/lib/clonebot --shell /usr/sbin/nologin clonebot \
    && install -d -o clonebot -g clonebot /var/lib/clonebot /var/lib/clonebot/router
COPY --from=builder /wheels/deps /tmp/deps
RUN python3 -m venv /opt/clonebot \
    && /opt/clonebot/bin/pip install --no-cache-dir --disable-pip-version-check \
        --no-index /tmp/deps/*.whl \
    && rm -rf /tmp/deps

FROM runtime
LABEL org.clonebot.stage=final
COPY --from=builder /wheels/clonebot /tmp/clonebot
RUN /opt/clonebot/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
        --no-deps /tmp/clonebot/*.whl \
    && /opt/clonebot/bin/pip check \
    && rm -rf /tmp/clonebot
ENV PATH=/opt/clonebot/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PORT=3000 \
    CLONEBOT_HTTP_HOST=0.0.0.0 \
    CLONEBOT_DATA_DIR=/var/lib/clonebot \
    CLONEBOT_BUSYBOX=/bin/busybox \
    DOCKER_HOST=unix:///var/run/docker.sock
USER clonebot
WORKDIR /var/lib/clonebot
EXPOSE 3000
# /healthz answers 503 while Docker or the database fails: urlopen raises, the check fails
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '3000'), timeout=4)"]
ENTRYPOINT ["clonebot"]
CMD ["serve"]

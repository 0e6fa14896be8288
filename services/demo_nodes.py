"""The demo environment's Docker objects, labelled as Compose labels a project.

``<env>_default`` (network), ``<env>_data`` (volume), ``<env>-db-1`` (PostgreSQL 15, on the
volume) and ``<env>-web-1``/``-2`` (busybox httpd). Everything is made only when missing, and
a node that is stopped is started: running it twice changes nothing.

A web node learns which environment it belongs to from ``DEMO_NODE``, its own node name, and
reaches the database at ``DB_HOST``: both name nodes, so a clone's are rewritten to the
clone's nodes (``services/naming.py`` ``NameRewriter``) and its page names the clone.
"""

from __future__ import annotations

import asyncio
import time

from services.demo_image import BIN, BUSYBOX
from services.docker import JSON, DockerClient
from services.environments import (
    COMPOSE_VOLUME,
    HTTP_PORT,
    NUMBER,
    ONEOFF,
    OWNER,
    PROJECT,
    SCALING,
    SERVICE,
)
from services.errors import BadRequest, DockerFailed
from services.naming import node_name

IMAGE = "clonebot-demo/postgres:15"
MARK = "clonebot.demo"  # on every node: a project of that name that lacks it is someone else's
ROWS = 42
DATA = "/var/lib/postgresql/data"
SOCKET = "/tmp"  # not /run/postgresql: the imported image's /run is whatever debootstrap left
NODES = (("db", 1), ("web", 1), ("web", 2))

# initdb at first start only (a clone finds the copied data); the web nodes connect over
# the project's network, which only they and the database are on: trust, no password
DB_START = (
    f"chown postgres:postgres {DATA} && chmod 700 {DATA} && "
    f'{{ [ -s {DATA}/PG_VERSION ] || {{ su postgres -c "{BIN}/initdb -D {DATA} --auth=trust '
    f'>/dev/null" && echo "host all all all trust" >> {DATA}/pg_hba.conf; }}; }} && '
    f'exec su postgres -c "exec {BIN}/postgres -D {DATA} '
    f"-c listen_addresses='*' -c unix_socket_directories={SOCKET}\""
)
# the page: which environment and node served it, and the orders its database holds now
CGI = f"""#!/bin/sh
env=${{DEMO_NODE%-web-*}}
count=$(PGCONNECT_TIMEOUT=3 {BIN}/psql -h "$DB_HOST" -U postgres -d postgres -tAc \\
  'SELECT count(*) FROM orders' 2>&1 | tr -d '<>&')
printf 'Content-Type: text/html; charset=utf-8\\r\\n\\r\\n'
cat <<EOF
<!doctype html><html><head><meta charset=utf-8><title>$env · clonebot demo shop</title>
<style>body{{font:18px system-ui,sans-serif;margin:3em auto;max-width:36em;color:#1d1c1d}}
b{{color:#007a5a}} small{{color:#616061}}</style></head><body>
<h1>Demo shop</h1>
<p>Served by environment <b id=env>$env</b> (node <span id=node>$DEMO_NODE</span>)</p>
<p><b id=count>$count</b> orders in its database (<span id=db>$DB_HOST</span>)</p>
<p><small>Clone it with <code>/clone $env $env-copy</code>, swap the domains, reload.</small></p>
</body></html>
EOF
"""
WEB_START = (
    f"mkdir -p /srv/www/cgi-bin && cat > /srv/www/cgi-bin/index.cgi <<'CGI'\n{CGI}CGI\n"
    f"chmod 755 /srv/www/cgi-bin/index.cgi && exec {BUSYBOX} httpd -f -p 80 -h /srv/www"
)
SEED = f"""DO $$ BEGIN
  IF to_regclass('public.orders') IS NULL THEN
    CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL,
                         placed_at timestamptz NOT NULL DEFAULT now());
    INSERT INTO orders (item) SELECT 'order ' || n FROM generate_series(1, {ROWS}) AS n;
  END IF;
END $$;"""


async def ensure_nodes(docker: DockerClient, *, env: str, owner: str) -> list[str]:
    """Make or start what is missing of the demo ``env``; what was done, in words."""
    await _check_ours(docker, env=env)
    done: list[str] = []
    network = f"{env}_default"
    if await docker.inspect_network(network) is None:
        labels = {PROJECT: env, "com.docker.compose.network": "default"}
        await docker.create_network({"Name": network, "Labels": labels})
        done.append(f"created network {network}")
    volume = f"{env}_data"
    if await docker.inspect_volume(volume) is None:
        await docker.create_volume(name=volume, labels={PROJECT: env, COMPOSE_VOLUME: "data"})
        done.append(f"created volume {volume}")
    for layer, number in NODES:
        name = node_name(env=env, layer=layer, number=number)
        if (found := await docker.find_container(name)) is None:
            config = _config(env=env, layer=layer, number=number, owner=owner)
            await docker.create_container(name=name, config=config)
            await docker.start_container(name)
            done.append(f"created {name}")
        elif found["State"]["Status"] in ("created", "exited", "dead"):
            await docker.start_container(name)
            done.append(f"started {name}")
    return done


async def _check_ours(docker: DockerClient, *, env: str) -> None:
    for container in await docker.list_containers(labels=[f"{PROJECT}={env}"]):
        if MARK not in (container.get("Labels") or {}):
            raise BadRequest(
                f"an environment {env} exists and is not the demo: remove it, or name the "
                "demo otherwise"
            )


def _config(*, env: str, layer: str, number: int, owner: str) -> JSON:
    network = f"{env}_default"
    labels = {
        PROJECT: env, SERVICE: layer, NUMBER: str(number), ONEOFF: "False", OWNER: owner,
        MARK: "1",
    }  # fmt: skip
    host: JSON = {"NetworkMode": network}
    if layer == "db":
        labels[SCALING] = "stateful"
        host["Mounts"] = [{"Type": "volume", "Source": f"{env}_data", "Target": DATA}]
        env_vars, script = [], DB_START
    else:
        labels[HTTP_PORT] = "80"
        db = node_name(env=env, layer="db", number=1)
        env_vars = [f"DEMO_NODE={node_name(env=env, layer=layer, number=number)}", f"DB_HOST={db}"]
        script = WEB_START
    return {
        "Image": IMAGE,
        # httpd as PID 1 ignores SIGTERM: a stop would wait 10 s to kill it; it holds nothing
        "StopSignal": "SIGTERM" if layer == "db" else "SIGKILL",
        "Cmd": ["sh", "-c", script],
        "Env": env_vars,
        "Labels": labels,
        "HostConfig": host,
        "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": [layer]}}},
    }


async def ensure_orders(docker: DockerClient, *, env: str, timeout_s: float = 60.0) -> bool:
    """Wait for the database to answer, then create and fill ``orders`` if it is not there
    (rows taken out of it stay out). True when it was made."""
    node = node_name(env=env, layer="db", number=1)
    deadline = time.monotonic() + timeout_s
    while (await _psql(docker, node=node, sql="SELECT 1"))[0] != 0:
        if time.monotonic() > deadline:
            logs = await docker.container_logs(node)
            raise DockerFailed(f"PostgreSQL in {node} does not answer: {logs[-500:]}")
        await asyncio.sleep(0.3)
    _, before = await _psql(docker, node=node, sql="SELECT to_regclass('public.orders')")
    code, out = await _psql(docker, node=node, sql=SEED)
    if code != 0:
        raise DockerFailed(f"filling the demo's orders in {node} failed: {out[-500:]}")
    return before.strip() == ""


async def _psql(docker: DockerClient, *, node: str, sql: str) -> tuple[int, str]:
    """psql's exit code and output, run in ``node`` through its socket."""
    argv = [f"{BIN}/psql", "-h", SOCKET, "-U", "postgres", "-d", "postgres"]
    argv += ["-v", "ON_ERROR_STOP=1", "-tAc", sql]
    try:
        async with docker.exec_session(node, argv) as session:
            lines = [line async for line in session.lines()]
            return await session.exit_code(), "\n".join(lines)
    except DockerFailed as exc:  # the node is starting, or restarting: not ready yet
        return 1, exc.message

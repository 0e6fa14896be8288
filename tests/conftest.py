"""Fixtures shared by every test layer: settings, a real Docker engine, source environments."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from services.context import Services, open_services
from services.demo_image import ensure_postgres_image
from services.demo_nodes import IMAGE as DEMO_IMAGE
from services.docker import DockerClient, gather_all
from services.environments import OWNER as OWNER_LABEL
from services.environments import PROJECT
from services.errors import DockerFailed, DockerUnavailable
from services.settings import Settings
from services.volumes import ensure_helper_image

pytest_plugins = ["tests.slack.emulator"]  # the `slack` fixture

IMAGE = os.environ.get("CLONEBOT_TEST_IMAGE", "clonebot-test/busybox:latest")
BASE_DOMAIN = "clonebot.test"
OWNER = "UOWNER1"  # every test source is owned by this Slack user (its clonebot.owner label)
ADMIN = "UADMIN1"
ANONYMOUS = re.compile(r"[0-9a-f]{64}")
POSTGRES = os.environ.get("CLONEBOT_TEST_POSTGRES_URL", "")

# A wait in busybox sh without a fork: `read -t` from a fifo nobody writes to is a builtin,
# where busybox's usleep is a process of its own. A writer forking usleep every 2 ms took a
# fifth of a core, and all of them together a fifth of the test suite's CPU; this one, 7%.
TICKS = "mkfifo /dev/shm/tick 2>/dev/null; exec 3<>/dev/shm/tick; "
TICK_2MS = "read -t 0.002 -u 3 _t"
# busybox sh: the writer appends "<n> <uptime in 1/100 s>" without forking, every 2 ms
WRITER = (
    TICKS + "i=$(cat /data/log 2>/dev/null | wc -l); while :; do i=$((i+1)); "
    f'read up _ < /proc/uptime; echo "$i $up" >> /data/log; {TICK_2MS}; done'
)
WEB = 'mkdir -p /www && echo "$PAGE" > /www/index.html && exec httpd -f -p 80 -h /www'


PROOFS = Path(__file__).parent / "proof"


@pytest.hookimpl(wrapper=True)  # around pytest-xdist's, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    """Every proof runs alone (after the parallel run, see scripts/checks.sh). The alone
    tests run on two workers: those that use Docker engines of their own and touch nothing the
    others share (``own_engines``) one after another on one, the rest one after another on
    the other."""
    for item in items:
        if PROOFS in item.path.parents:
            item.add_marker(pytest.mark.alone)
        if item.get_closest_marker("alone"):
            own = item.get_closest_marker("own_engines") is not None
            item.add_marker(pytest.mark.xdist_group("own_engines" if own else "shared_engine"))
    yield


def pytest_sessionstart(session: pytest.Session) -> None:
    """With parallel workers (pytest-xdist), the images the product builds when the engine
    lacks them are built first, once, by the controller: else several workers would each
    build one at once (the demo's takes a minute) and the engine keep the extra copies."""
    config = session.config
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", default=None):
        return
    asyncio.run(_build_images(Settings()))


async def _build_images(settings: Settings) -> None:
    try:
        async with DockerClient(settings.docker_host) as docker:
            await docker.ping()
            await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
            await ensure_postgres_image(docker, image=DEMO_IMAGE, busybox=settings.busybox)
    except (DockerUnavailable, DockerFailed):
        pass  # no engine, or no tools to build with: each test that needs them says so


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database: a SQLite file, or a new database on the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'clonebot.db'}"
        return
    assert POSTGRES, "set CLONEBOT_TEST_POSTGRES_URL (make test starts a PostgreSQL and sets it)"
    name = f"clonebot_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(POSTGRES.replace("postgresql+asyncpg", "postgresql"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield POSTGRES.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """Settings of a test: SQLite in its own folder unless a test asks for ``db_settings``."""
    monkeypatch.setenv("CLONEBOT_BASE_DOMAIN", BASE_DOMAIN)
    monkeypatch.setenv("CLONEBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLONEBOT_ADMINS", ADMIN)
    # its own port: tests run side by side (pytest-xdist), and an HAProxy started on the
    # default 127.0.0.1:8080 would take another test's
    monkeypatch.setenv("CLONEBOT_ROUTER_BIND", f"127.0.0.1:{_free_port()}")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return Settings()


@pytest.fixture
def routed(settings: Settings, tmp_path: Path) -> Settings:
    """Settings with a router of the test's own: a free port, files in the test's folder."""
    bind = f"127.0.0.1:{_free_port()}"
    return settings.model_copy(update={"router_bind": bind, "router_dir": tmp_path / "router"})


@pytest.fixture
def db_settings(settings: Settings, database_url: str) -> Settings:
    """The test's settings on each database in turn (SQLite, then PostgreSQL)."""
    return settings.model_copy(update={"database_url": database_url})


@pytest.fixture
async def svc(db_settings: Settings) -> AsyncIterator[Services]:
    """The services over a fresh database (migrated) and the real Docker engine."""
    async with open_services(db_settings) as services:
        yield services


@pytest.fixture
async def docker(settings: Settings) -> AsyncIterator[DockerClient]:
    async with DockerClient(settings.docker_host) as client:
        await client.ping()  # no engine is a failure, never a skip
        yield client


@dataclass
class SourceEnv:
    name: str
    volume: str  # the db layer's named volume
    db_port: int  # the db's published host port


async def remove_projects(docker: DockerClient, names: set[str]) -> None:
    """Remove every container, network, volume and image labelled with one of the projects.

    Containers of all of them go first: a clone's container may mount its source's volume.
    """
    labels = [[f"{PROJECT}={name}"] for name in sorted(names)]
    anonymous: set[str] = set()  # a test source's /anon: Docker made it, without our labels
    containers = [c for label in labels for c in await docker.list_containers(labels=label)]
    for c in containers:
        anonymous |= {
            m["Name"]
            for m in c.get("Mounts") or []
            if m.get("Type") == "volume" and ANONYMOUS.fullmatch(m.get("Name") or "")
        }
    await gather_all(*(docker.remove_container(c["Id"]) for c in containers))
    for name in sorted(anonymous):
        with contextlib.suppress(DockerFailed):  # a clone's, labelled, may be gone already
            await docker.remove_volume(name)
    for label in labels:
        for n in await docker.list_networks(labels=label):
            await docker.remove_network(n["Id"])
        for v in await docker.list_volumes(labels=label):
            await docker.remove_volume(v["Name"])
        for i in await docker.list_images(labels=label):
            await docker.remove_image(i["Id"])


async def take_down(docker: DockerClient, name: str) -> None:
    """What `docker compose down` does: containers and networks go, volumes stay."""
    label = [f"{PROJECT}={name}"]
    for container in await docker.list_containers(labels=label):
        await docker.remove_container(container["Id"])
    for network in await docker.list_networks(labels=label):
        await docker.remove_network(network["Id"])


MakeSource = Callable[..., Awaitable[SourceEnv]]


@pytest.fixture
async def make_source(docker: DockerClient) -> AsyncIterator[MakeSource]:
    """Factory: a Compose-labelled source environment; it and its clones are removed after."""
    made: list[str] = []

    async def make(
        *,
        web_nodes: int = 2,
        db_nodes: int = 1,
        db_labels: dict[str, str] | None = None,
        seed_kib: int = 64,
    ) -> SourceEnv:
        name = f"t{secrets.token_hex(3)}"
        made.append(name)
        return await create_source(
            docker,
            name=name,
            web_nodes=web_nodes,
            db_nodes=db_nodes,
            db_labels=db_labels or {},
            seed_kib=seed_kib,
        )

    yield make
    ours = {
        e for e in await _projects(docker) if any(e == m or e.startswith(f"{m}-") for m in made)
    }
    await remove_projects(docker, ours)


async def _projects(docker: DockerClient) -> set[str]:
    found = set()
    for lister in (docker.list_containers, docker.list_networks, docker.list_volumes):
        for item in await lister(labels=[PROJECT]):
            found.add((item.get("Labels") or {}).get(PROJECT, ""))
    return found


def compose_labels(env: str, layer: str, number: int) -> dict[str, str]:
    return {
        PROJECT: env,
        "com.docker.compose.service": layer,
        "com.docker.compose.container-number": str(number),
        "com.docker.compose.oneoff": "False",
    }


async def create_source(
    docker: DockerClient,
    *,
    name: str,
    web_nodes: int,
    db_nodes: int,
    db_labels: dict[str, str],
    seed_kib: int,
    web_image: str = IMAGE,
) -> SourceEnv:
    network = f"{name}_default"
    _, volume = await gather_all(
        docker.create_network(
            {"Name": network, "Labels": {PROJECT: name, "com.docker.compose.network": "default"}}
        ),
        docker.create_volume(
            name=f"{name}_data", labels={PROJECT: name, "com.docker.compose.volume": "data"}
        ),
    )
    port = _free_port()
    # first start only: a clone must find the copied data, not make its own
    seed = f"[ -e /data/seed ] || dd if=/dev/urandom of=/data/seed bs=1024 count={seed_kib} "
    seed += "2>/dev/null; [ -e /anon/file ] || echo anon > /anon/file; "
    seed += "[ -e /etc/db/db.conf ] || { mkdir -p /etc/db && echo conf > /etc/db/db.conf; }; "

    def db(n: int) -> Awaitable[None]:
        # only the master writes the log; every node has its own anonymous volume
        cmd = seed + (WRITER if n == 1 else f"echo node{n} > /anon/node; exec sleep 100000")
        return _run_node(
            docker,
            name=f"{name}_db_{n}",
            network=network,
            labels={**compose_labels(name, "db", n), **db_labels},
            cmd=cmd,
            host={
                "Mounts": [
                    {"Type": "volume", "Source": volume, "Target": "/data"},
                    {"Type": "volume", "Target": "/anon"},
                ],
                "PortBindings": {"5432/tcp": [{"HostPort": str(port if n == 1 else 0)}]},
            },
            extra={"ExposedPorts": {"5432/tcp": {}}},
        )

    def web(n: int) -> Awaitable[None]:
        return _run_node(
            docker,
            name=f"{name}_web_{n}",
            network=network,
            labels={**compose_labels(name, "web", n), "clonebot.http.port": "80"},
            cmd=WEB,
            host={},
            image=web_image,
            extra={
                "Env": [
                    f"PAGE={name} web {n}",
                    f"DB_URL=postgres://{name}_db_1:5432/app",
                    f"SITE=http://{name}.{BASE_DOMAIN}/",
                    "PLAIN=untouched",
                ]
            },
        )

    # the nodes in two rounds of concurrent calls, not one call after another (the engine
    # waits on each); the master first, so that it alone seeds the shared volume
    await gather_all(
        *(db(n) for n in range(1, min(db_nodes, 1) + 1)), *map(web, range(1, web_nodes + 1))
    )
    await gather_all(*map(db, range(2, db_nodes + 1)))
    return SourceEnv(name=name, volume=volume, db_port=port)


async def _run_node(
    docker: DockerClient,
    *,
    name: str,
    network: str,
    labels: dict[str, str],
    cmd: str,
    host: dict[str, object],
    extra: dict[str, object],
    image: str = IMAGE,
) -> None:
    layer = labels["com.docker.compose.service"]
    config = {
        "Image": image,
        "Cmd": ["sh", "-c", cmd],
        "Labels": {OWNER_LABEL: OWNER, **labels},
        # an init as PID 1 passes SIGTERM on: `docker stop` (a rename, a freeze by stop) takes
        # well under a second instead of waiting out its 10 s for a shell that ignores it
        "HostConfig": {"NetworkMode": network, "Init": True, **host},
        "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": [layer]}}},
        **extra,
    }
    cid = await docker.create_container(name=name, config=config)
    await docker.start_container(cid)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


async def exec_output(docker: DockerClient, container: str, script: str) -> str:
    """Run a shell script in a running container; its output, failing on a non-zero exit."""
    async with docker.exec_session(container, ["sh", "-c", script]) as session:
        lines = [line async for line in session.lines()]
        code = await session.exit_code()
    assert code == 0, f"{script!r} in {container} exited {code}: {lines}"
    return "\n".join(lines)


async def read_volume(docker: DockerClient, volume: str, path: str) -> str:
    """A file's content read from a volume by a throwaway container."""
    return await in_volume(docker, volume, f"cat /v/{path}")


async def in_volume(docker: DockerClient, volume: str, script: str, *, write: bool = False) -> str:
    """The output of a script run beside a volume mounted at /v (read-only unless ``write``)."""
    mode = "rw" if write else "ro"
    cid = await docker.create_container(
        name=None,
        config={
            "Image": IMAGE,
            "Cmd": ["sh", "-c", script],
            "HostConfig": {"Binds": [f"{volume}:/v:{mode}"], "NetworkMode": "none"},
        },
    )
    try:
        await docker.start_container(cid)
        assert await docker.wait_container(cid) == 0, await docker.container_logs(cid)
        return await docker.container_logs(cid)
    finally:
        await docker.remove_container(cid)

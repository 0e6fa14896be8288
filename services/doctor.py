"""``clonebot doctor``: whether everything clonebot needs is there, each check with its fix.

The same checks run when ``clonebot serve`` starts, which refuses to start on a failing one.
A check of something not configured (Slack without tokens) is skipped, not failed. Every
check has a time limit: one that hangs fails, naming what it waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from services.docker import DockerClient
from services.engine_host import POOL_FIX, free_disk, network_room
from services.errors import ClonebotError
from services.settings import Settings
from services.traffic.haproxy import MasterCLI, RouterFiles, RuntimeAPI
from services.volumes import ensure_helper_image
from storage.db import alembic_config, create_engine

CHECK_S = 20.0  # one check's time limit (building the helper image may take a few seconds)
MIN_API = (1, 41)  # Docker 20.10
MIN_HAPROXY = (2, 4)  # prepare/commit map and `add map @ver` (services/traffic/haproxy.py)


@dataclass(frozen=True)
class Result:
    check: str
    ok: bool
    skipped: bool = False
    detail: str = ""  # what was found
    fix: str = ""  # what to do, when it failed

    def as_json(self) -> dict[str, object]:
        return asdict(self)


class Failed(Exception):
    """A check's failure: what was found, and what to do about it."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


class Skipped(Exception):
    """A check of something not configured."""


Check = tuple[str, Callable[[], Awaitable[str]]]  # name, and a call returning the detail
Chain = Sequence[Check]  # checks run in turn: each may rely on what the ones before found


async def run_checks(chains: Sequence[Chain]) -> list[Result]:
    """Every check: the chains at once, each chain's checks in turn; results in order."""

    async def chain(checks: Chain) -> list[Result]:
        return [await _run(name, call) for name, call in checks]

    return [r for results in await asyncio.gather(*map(chain, chains)) for r in results]


async def _run(name: str, call: Callable[[], Awaitable[str]]) -> Result:
    try:
        async with asyncio.timeout(CHECK_S):
            return Result(name, ok=True, detail=await call())
    except Skipped as exc:
        return Result(name, ok=True, skipped=True, detail=str(exc))
    except Failed as exc:
        return Result(name, ok=False, detail=exc.detail, fix=exc.fix)
    except TimeoutError:
        fix = "see that it runs and answers"
        return Result(name, ok=False, detail=f"no answer in {CHECK_S:.0f} s", fix=fix)
    except ClonebotError as exc:
        return Result(name, ok=False, detail=exc.message, fix="see the message")
    except Exception as exc:  # a check must never stop the others
        return Result(name, ok=False, detail=f"{type(exc).__name__}: {exc}", fix="see the message")


@contextlib.asynccontextmanager
async def host_checks(settings: Settings) -> AsyncIterator[list[Chain]]:
    """The checks of the settings, the Docker engine, the helper image, HAProxy and the
    database, with what they share (a Docker client) open while the block runs."""
    async with DockerClient(settings.docker_host) as docker:
        yield [
            [("settings", lambda: _settings(settings))],
            [
                ("docker engine", lambda: _engine(docker, settings)),
                ("docker storage driver", lambda: _storage(docker)),
                ("docker networks", lambda: _networks(docker)),
                ("helper image", lambda: _helper(docker, settings)),
                ("docker disk", lambda: _disk(docker, settings)),
            ],
            [
                ("haproxy", lambda: _haproxy(settings)),
                ("router address", lambda: _router_address(settings)),
                ("router socket", lambda: _router_socket(settings)),
            ],
            [("database", lambda: _database(settings))],
        ]


async def _settings(settings: Settings) -> str:
    assert settings.router_dir is not None
    for what, folder in (("CLONEBOT_DATA_DIR", settings.data_dir), ("router", settings.router_dir)):
        if problem := await asyncio.to_thread(_unwritable, folder):
            raise Failed(f"{what} {folder}: {problem}", f"make {folder} writable by this user")
    if not await asyncio.to_thread(settings.busybox.is_file):
        raise Failed(
            f"CLONEBOT_BUSYBOX {settings.busybox} is missing",
            "install busybox-static (the helper image is built from it)",
        )
    return f"data in {settings.data_dir}, router files in {settings.router_dir}"


def _unwritable(folder: Path) -> str | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


async def _engine(docker: DockerClient, settings: Settings) -> str:
    try:
        version = await docker.ping()
    except ClonebotError as exc:
        raise Failed(
            f"{settings.docker_host} does not answer: {exc.message}",
            "start Docker, or set DOCKER_HOST to its socket (and this user in its group)",
        ) from None
    api = str(version.get("ApiVersion", "0.0"))
    if _numbers(api) < MIN_API:
        raise Failed(f"Docker API {api}", "upgrade Docker to 20.10 (API 1.41) or newer")
    return f"Docker {version.get('Version')}, API {api}"


async def _storage(docker: DockerClient) -> str:
    info = await docker.info()
    driver = str(info.get("Driver"))
    if driver == "overlay2":
        return "overlay2: a freeze lists a master's changes from its upper directory"
    return f"{driver}: a freeze lists a master's changes with docker diff (slower than overlay2)"


async def _networks(docker: DockerClient) -> str:
    room = await network_room(docker)
    detail = f"{room.free} more bridge networks of {room.total} (each clone needs its source's)"
    if room.free == 0:
        raise Failed(detail, POOL_FIX)
    if room.free < 10:
        detail += f"; to make room: {POOL_FIX}"
    return detail


async def _helper(docker: DockerClient, settings: Settings) -> str:
    image = settings.helper_image
    if await docker.inspect_image(image) is not None:
        return image
    try:
        await ensure_helper_image(docker, image=image, busybox=settings.busybox)
    except ClonebotError as exc:
        raise Failed(exc.message, "install busybox-static rsync acl attr") from None
    return f"{image} (built now from this host's programs)"


async def _disk(docker: DockerClient, settings: Settings) -> str:
    free = await free_disk(docker, image=settings.helper_image)
    detail = f"{free / 2**30:.1f} GiB free on the engine's data root"
    if free < settings.disk_reserve_bytes:
        raise Failed(
            detail + f", less than CLONEBOT_DISK_RESERVE ({settings.disk_reserve_bytes} bytes)",
            "free disk on the Docker host (docker system prune, delete unused clones)",
        )
    return detail


async def _haproxy(settings: Settings) -> str:
    if settings.router_mode == "external":
        raise Skipped("external router: HAProxy runs elsewhere")
    binary = shutil.which("haproxy")
    if binary is None:
        raise Failed(
            "haproxy is not installed", "install HAProxy 2.4 or newer (apt install haproxy)"
        )
    proc = await asyncio.create_subprocess_exec(
        binary, "-v", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out = (await proc.communicate())[0].decode(errors="replace")
    found = re.search(r"version (\d+)\.(\d+)[.\d]*", out)
    if found is None:
        raise Failed(f"{binary} -v said {out.strip()[:80]!r}", "install HAProxy 2.4 or newer")
    version = (int(found[1]), int(found[2]))
    if version < MIN_HAPROXY:
        raise Failed(f"HAProxy {found[0]}", "install HAProxy 2.4 or newer")
    return f"{binary}, HAProxy {found[0].split()[1]}"


async def _router_address(settings: Settings) -> str:
    assert settings.router_dir is not None
    if settings.router_mode == "external":
        raise Skipped("external router: HAProxy binds its own address")
    if await MasterCLI(RouterFiles(settings.router_dir).master).alive():
        return f"{settings.router_bind}: clonebot's HAProxy runs"
    host, _, port = settings.router_bind.rpartition(":")
    try:
        await asyncio.to_thread(_try_bind, host.strip("[]"), int(port))
    except OSError as exc:
        raise Failed(
            f"{settings.router_bind} is taken by another program ({exc.strerror})",
            "stop it, or set CLONEBOT_ROUTER_BIND to a free HOST:PORT",
        ) from None
    return f"{settings.router_bind} is free"


def _try_bind(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as HAProxy binds
        sock.bind((host, port))


async def _router_socket(settings: Settings) -> str:
    assert settings.router_dir is not None
    files = RouterFiles(settings.router_dir)
    if not await MasterCLI(files.master).alive():
        if settings.router_mode == "embedded":
            raise Skipped("clonebot's HAProxy is not running (`clonebot serve` starts it)")
        raise Failed(
            f"no HAProxy answers on {files.master}",
            f"start HAProxy with `haproxy -W -S {files.master} -f {files.config}` and the "
            f"router folder {settings.router_dir} shared with clonebot",
        )
    try:
        await RuntimeAPI(files.api).command("show info")
    except OSError as exc:
        raise Failed(
            f"HAProxy runs but its runtime socket {files.api} does not answer: {exc.strerror}",
            "let clonebot write the router folder's haproxy.cfg (it declares the socket)",
        ) from None
    return f"HAProxy answers on {files.master} and {files.api}"


async def _database(settings: Settings) -> str:
    engine = create_engine(settings.database_url)
    kind = settings.database_url.split("+", 1)[0]
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            current = await conn.run_sync(_revision)
    except Exception as exc:
        raise Failed(
            f"{kind} database does not answer: {type(exc).__name__}",
            "start it, or set DATABASE_URL (postgresql+asyncpg://USER@HOST/DB)",
        ) from None
    finally:
        await engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    if current != head:
        raise Failed(
            f"{kind} schema at {current or 'nothing'}, the newest is {head}",
            "run `clonebot db upgrade` (clonebot serve does it at start)",
        )
    return f"{kind}, schema {head} (the newest)"


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])

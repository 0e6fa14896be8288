"""Traffic from the command line, and `clonebot serve` keeping HAProxy on the routes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from services.settings import Settings
from services.traffic.haproxy import RouterFiles
from tests.cli import clonebot, clonebot_env, run_cli
from tests.conftest import OWNER, MakeSource
from tests.serving import cli, served_page


@pytest.fixture
async def serving(routed: Settings) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env=clonebot_env(routed),
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=15) == 0


async def test_changes_made_while_haproxy_is_down_apply_when_serve_starts(
    routed: Settings, make_source: MakeSource, tmp_path: Path
) -> None:
    blue = (await make_source(web_nodes=1)).name
    out = cli(routed, "domain", "add", blue, "Shop.Test", "--as", OWNER)
    assert "shop.test -> " in out and "applied when `clonebot serve` starts" in out
    routes = json.loads(cli(routed, "routes", "--json"))
    assert routes["shop.test"] == [[f"{blue}-1", 200, False]]

    log = tmp_path / "serve.log"
    with log.open("wb") as out_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve",
            stdout=out_file, stderr=asyncio.subprocess.STDOUT,
            env=clonebot_env(routed) | {"CLONEBOT_NICE": "-7"},
        )  # fmt: skip
    try:
        # serve recovers and runs its checks first (seconds on a loaded machine)
        served = await served_page(routed, "shop.test", within_s=60)
        assert served == f"{blue} web 1", log.read_text()
        assert routed.router_dir is not None
        master = int((routed.router_dir / "haproxy.pid").read_text().split()[0])
        # serve, every thread of it, runs at CLONEBOT_NICE where it may (root here); its
        # HAProxy at the niceness serve was started with
        started = os.getpriority(os.PRIO_PROCESS, 0)
        wanted = min(-7, started) if os.geteuid() == 0 else started
        assert set(_niceness(proc.pid).values()) == {wanted}
        assert set(_niceness(master).values()) == {started}
        # HAProxy killed: serve starts it again, with every route, at that niceness again
        os.kill(master, signal.SIGKILL)
        await asyncio.sleep(0.5)
        assert await served_page(routed, "shop.test") == f"{blue} web 1"
        again = int((routed.router_dir / "haproxy.pid").read_text().split()[0])
        assert again != master and set(_niceness(again).values()) == {started}
        assert await served_page(routed, f"{blue}.clonebot.test") == f"{blue} web 1"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=15) == 0, log.read_text()


def _niceness(pid: int) -> dict[int, int]:
    """The niceness of each thread of process ``pid`` (``/proc/PID/task/TID/stat``)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rpartition(")")[2].split()
        found[int(task.name)] = int(fields[16])  # the 19th field: the 3rd follows the name
    return found


async def test_swap_from_the_command_line_moves_served_traffic(
    routed: Settings, make_source: MakeSource, serving: asyncio.subprocess.Process
) -> None:
    blue, green = (await make_source(web_nodes=1)).name, (await make_source(web_nodes=1)).name
    cli(routed, "domain", "add", blue, "shop.test", "--as", OWNER)
    assert await served_page(routed, "shop.test") == f"{blue} web 1"
    out = cli(routed, "swap", blue, green, "--as", OWNER)
    assert "applied to HAProxy" in out
    assert await served_page(routed, "shop.test", within_s=2) == f"{green} web 1"


async def test_bad_traffic_input_is_one_line(routed: Settings, make_source: MakeSource) -> None:
    blue, green = (await make_source(web_nodes=1)).name, (await make_source(web_nodes=1)).name
    cli(routed, "domain", "add", blue, "shop.test", "--as", OWNER)
    for args, message in [
        (("domain", "add", blue, "bad_domain!", "--as", OWNER), "is not a valid domain name"),
        (
            ("domain", "add", green, "shop.test", "--as", OWNER),
            f"shop.test is already bound to {blue}",
        ),
        (("split", "shop.test", f"{blue}=150", f"{green}=0", "--as", OWNER), "from 0 to 100"),
        (("split", "shop.test", f"{blue}=0", f"{green}=0", "--as", OWNER), "above 0"),
        (("split", "shop.test", f"{blue}=50", f"{blue}=50", "--as", OWNER), "named twice"),
        (("split", "shop.test", "nonsense", "--as", OWNER), "is not ENV=WEIGHT"),
        (("swap", blue, blue, "--as", OWNER), "with itself"),
        (
            ("domain", "add", green, f"www.{blue}.Clonebot.Test.", "--as", OWNER),
            f"www.{blue}.clonebot.test is under clonebot.test, where clonebot gives every",
        ),
        (("swap", blue, green, "--as", "USTRANGER"), f"{blue} belongs to <@{OWNER}>"),
    ]:
        done = clonebot(*args, settings=routed)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    routes = json.loads(cli(routed, "routes", "--json"))
    assert routes["shop.test"] == [[f"{blue}-1", 200, False]]


async def test_serve_keeps_an_external_haproxy_on_the_routes(
    routed: Settings, make_source: MakeSource, tmp_path: Path
) -> None:
    """CLONEBOT_ROUTER_MODE=external: serve writes the files and drives an HAProxy it did not
    start (here one on the host, as its operator would run it)."""
    external = routed.model_copy(update={"router_mode": "external"})
    assert external.router_dir is not None
    files = RouterFiles(external.router_dir)
    blue, green = (await make_source(web_nodes=1)).name, (await make_source(web_nodes=1)).name
    cli(external, "domain", "add", blue, "shop.test", "--as", OWNER)
    log = tmp_path / "serve.log"
    with log.open("wb") as out_file:
        serve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve",
            stdout=out_file, stderr=asyncio.subprocess.STDOUT, env=clonebot_env(external),
        )  # fmt: skip
    haproxy = None
    try:
        # serve is up (and so stops cleanly on SIGTERM) once it says so, its checks done
        async with asyncio.timeout(60):
            while b"clonebot serving" not in log.read_bytes():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert files.config.exists()
        haproxy = await asyncio.create_subprocess_exec(
            "haproxy", "-W", "-S", str(files.master), "-f", str(files.config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert await served_page(external, "shop.test") == f"{blue} web 1"
        out = cli(external, "swap", blue, green, "--as", OWNER)
        assert "applied to HAProxy" in out
        assert await served_page(external, "shop.test", within_s=2) == f"{green} web 1"
    finally:
        if haproxy is not None:  # first: a failing assertion below must not leave it running
            haproxy.terminate()
            await haproxy.wait()
        serve.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(serve.wait(), timeout=15) == 0


async def _shell(settings: Settings, *args: str) -> str:
    """The command line from a shell that has the router's folder but not its bind."""
    env = {k: v for k, v in clonebot_env(settings).items() if k != "CLONEBOT_ROUTER_BIND"}
    done = await asyncio.to_thread(run_cli, list(args), env=env, timeout=60)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


async def _requests(bind: str, *, stop: asyncio.Event) -> Counter[str]:
    """Requests to shop.test one after another until ``stop`` (at most 60 s): each outcome."""
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with asyncio.timeout(60):
            while not stop.is_set():
                try:
                    url = f"http://{bind}/"
                    async with session.get(url, headers={"Host": "shop.test"}) as resp:
                        seen[f"{resp.status} {(await resp.text()).strip()}"] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    seen[type(exc).__name__] += 1
                await asyncio.sleep(0.005)
    return seen


@pytest.mark.slow
async def test_a_swap_from_a_shell_without_the_routers_bind_leaves_it_listening(
    routed: Settings, make_source: MakeSource, serving: asyncio.subprocess.Process
) -> None:
    """serve listens where its CLONEBOT_ROUTER_BIND says; a command run from a shell without
    that setting (so with the default 127.0.0.1:8080) only changes the routes."""
    blue, green = [(await make_source(web_nodes=1, db_nodes=0)).name for _ in range(2)]
    await _shell(routed, "domain", "add", blue, "shop.test", "--as", OWNER)
    assert await served_page(routed, "shop.test") == f"{blue} web 1"
    stop = asyncio.Event()
    load = asyncio.create_task(_requests(routed.router_bind, stop=stop))
    for turn in range(2):
        out = await _shell(routed, "swap", blue, green, "--as", OWNER)
        assert "applied to HAProxy" in out
        assert await served_page(routed, "shop.test", within_s=2) == (
            f"{green} web 1" if turn % 2 == 0 else f"{blue} web 1"
        )
    await asyncio.sleep(1.5)  # serve's keeper has had its turn too
    stop.set()
    seen = await load
    assert set(seen) == {f"200 {blue} web 1", f"200 {green} web 1"}, seen
    assert sum(seen.values()) >= 50, seen
    assert routed.router_dir is not None
    assert f"bind {routed.router_bind}\n" in (routed.router_dir / "haproxy.cfg").read_text()

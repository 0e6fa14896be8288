"""Faults outside clonebot's process while a stateful clone runs from Slack.

Each test runs `clonebot serve` (Slack at the emulator), holds a clone at its freeze (the
source's database paused) with a failpoint, brings the fault on, lets the job go on, and checks
what a user would see: the source as the fault leaves it (never left paused), nothing of the
job left, the job and its Slack message saying what happened, serve still healthy.

The engine restart and the full disk happen on an engine of the test's own (tests/proof/
engine.py), never on the one every test shares; the PostgreSQL restart on a cluster of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.docker import DockerClient
from services.environments import JOB, PROJECT, get_environment
from services.settings import Settings
from services.traffic.haproxy import RouterFiles
from tests.conftest import BASE_DOMAIN, OWNER, MakeSource, create_source
from tests.proof.cluster import own_cluster
from tests.proof.engine import Engine, own_engine, pool_bridges
from tests.serving import Bot, Serving, cli, served_page, until
from tests.slack.emulator import SlackEmulator

pytestmark = [pytest.mark.docker, pytest.mark.slow]
DONE = ":white_check_mark:"
ENGINE_DOWN_S = 5  # how long the engine stays stopped while the job goes on


class Hold:
    """A clone held at a failpoint of `clonebot serve` until the test releases it."""

    def __init__(self, tmp: Path, point: str = "freeze") -> None:
        self.point, self.file = point, tmp / f"release-{point}"

    def env(self) -> dict[str, str]:
        return {"CLONEBOT_FAILPOINT": self.point, "CLONEBOT_FAILPOINT_RELEASE": str(self.file)}

    async def reached(self, bot: Bot) -> None:
        await until(
            lambda: f"failpoint {self.point} reached" in bot.log.read_text(),
            what=f"the clone held at {self.point}",
            timeout_s=120,
        )

    def release(self) -> None:
        self.file.touch()


async def healthz(bot: Bot) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{bot.port}/healthz") as resp,
    ):
        return resp.status


def the_job(settings: Settings, env: str) -> dict[str, Any]:
    jobs = [j for j in json.loads(cli(settings, "jobs", "--json")) if j["environment"] == env]
    assert len(jobs) == 1, jobs
    return jobs[0]  # type: ignore[no-any-return]


async def leftovers(docker: DockerClient, *, job: str, clone: str) -> list[str]:
    """Whatever the engine still holds of the job or its clone (the test's names only)."""
    found = []
    for label in (f"{JOB}={job}", f"{PROJECT}={clone}"):
        for kind, lister in (
            ("container", docker.list_containers),
            ("network", docker.list_networks),
            ("volume", docker.list_volumes),
            ("image", docker.list_images),
        ):
            found += [f"{kind} {label}: {item}" for item in await lister(labels=[label])]
    return found


async def source_states(docker: DockerClient, name: str) -> set[str]:
    return {n.state for n in (await get_environment(docker, name)).nodes}


async def test_haproxy_killed_mid_clone_is_restarted_with_every_route_and_the_clone_ends(
    routed: Settings,
    slack: SlackEmulator,
    make_source: MakeSource,
    docker: DockerClient,
    tmp_path: Path,
) -> None:
    prod = (await make_source(web_nodes=1)).name
    copy = f"{prod}-ha"
    shop = f"shop-{prod}.test"
    cli(routed, "domain", "add", prod, shop, "--as", OWNER)
    hold = Hold(tmp_path)
    files = RouterFiles(routed.router_dir)  # type: ignore[arg-type]

    async with asyncio.timeout(240), Serving(routed, slack, tmp_path, **hold.env()) as bot:
        assert f"{prod} web 1" in await served_page(routed, shop)
        await bot.command(OWNER, "/clone", f"{prod} {copy}")
        await hold.reached(bot)
        assert "paused" in await source_states(docker, prod)

        killed = int(files.pidfile.read_text().split()[0])
        os.kill(killed, signal.SIGKILL)
        began = time.monotonic()
        await until(lambda: _pid(files) not in (None, killed), what="a new HAProxy", timeout_s=30)
        assert f"{prod} web 1" in await served_page(routed, shop, within_s=30)
        back = time.monotonic() - began
        print(f"\nHAProxy killed: serving {shop} again {back:.1f} s later")

        hold.release()
        final = await bot.final_message(timeout_s=120)
        assert final["text"].startswith(f":white_check_mark: *{copy}* is running at"), final
        assert f"{prod} web 1" in await served_page(routed, f"{copy}.{BASE_DOMAIN}", within_s=30)
        assert f"{prod} web 1" in await served_page(routed, shop)
        assert await healthz(bot) == 200
        assert "HAProxy stopped: starting it again with every route" in bot.log.read_text()

    assert the_job(routed, copy)["state"] == "succeeded"
    assert await source_states(docker, prod) == {"running"}
    assert await docker.list_containers(labels=["clonebot.helper", f"{PROJECT}={copy}"]) == []


async def test_an_external_haproxy_killed_mid_clone_and_started_again_gets_every_route(
    routed: Settings,
    slack: SlackEmulator,
    make_source: MakeSource,
    docker: DockerClient,
    tmp_path: Path,
) -> None:
    """CLONEBOT_ROUTER_MODE=external: the HAProxy that serve drives is its operator's. Killed
    while the source is frozen and started again from the router folder, as its supervisor
    (compose's restart policy) would: it serves the routes at once, and the clone's own."""
    external = routed.model_copy(update={"router_mode": "external"})
    prod = (await make_source(web_nodes=1)).name
    copy = f"{prod}-ext"
    shop = f"shop-{prod}.test"
    cli(external, "domain", "add", prod, shop, "--as", OWNER)
    hold = Hold(tmp_path)
    files = RouterFiles(external.router_dir)  # type: ignore[arg-type]

    async with asyncio.timeout(240), Serving(external, slack, tmp_path, **hold.env()) as bot:
        haproxy = await _operators_haproxy(files)
        try:
            assert f"{prod} web 1" in await served_page(external, shop, within_s=30)
            await bot.command(OWNER, "/clone", f"{prod} {copy}")
            await hold.reached(bot)
            assert "paused" in await source_states(docker, prod)

            haproxy.kill()
            await haproxy.wait()
            began = time.monotonic()
            haproxy = await _operators_haproxy(files)
            assert f"{prod} web 1" in await served_page(external, shop, within_s=30)
            back = time.monotonic() - began

            hold.release()
            final = await bot.final_message(timeout_s=120)
            assert final["text"].startswith(f":white_check_mark: *{copy}* is running at"), final
            clone_page = await served_page(external, f"{copy}.{BASE_DOMAIN}", within_s=30)
            routed_s = time.monotonic() - began
            assert f"{prod} web 1" in clone_page
            assert await healthz(bot) == 200
        finally:
            haproxy.terminate()
            await haproxy.wait()
    print(
        f"\nexternal HAProxy killed and started again: serving {shop} {back:.1f} s later, "
        f"the clone's domain {routed_s:.1f} s later"
    )
    assert the_job(external, copy)["state"] == "succeeded"
    assert await source_states(docker, prod) == {"running"}


async def _operators_haproxy(files: RouterFiles) -> asyncio.subprocess.Process:
    """HAProxy as its operator runs it beside clonebot: from the router folder serve writes."""
    return await asyncio.create_subprocess_exec(
        "haproxy", "-W", "-S", str(files.master), "-f", str(files.config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def _pid(files: RouterFiles) -> int | None:
    try:
        return int(files.pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@pytest.mark.parametrize(
    ("down_s", "held_s"), [(5, 0), (15, 12)], ids=["within-the-lease", "past-the-lease"]
)
async def test_postgresql_restarted_mid_clone(
    routed: Settings,
    slack: SlackEmulator,
    make_source: MakeSource,
    docker: DockerClient,
    tmp_path: Path,
    down_s: float,
    held_s: float,
) -> None:
    """PostgreSQL stopped while the clone holds its source frozen, started ``down_s`` later;
    the job held ``held_s`` of it (a lease not renewed for 10 s stops the job)."""
    prod = (await make_source(web_nodes=1)).name
    copy = f"{prod}-pg"
    hold = Hold(tmp_path)
    with own_cluster() as pg:
        settings = routed.model_copy(update={"database_url": pg.url})
        async with asyncio.timeout(300), Serving(settings, slack, tmp_path, **hold.env()) as bot:
            await bot.command(OWNER, "/clone", f"{prod} {copy}")
            await hold.reached(bot)
            await asyncio.to_thread(pg.stop)
            began = time.monotonic()
            await asyncio.sleep(held_s)
            hold.release()  # the job goes on, its database gone
            await asyncio.sleep(down_s - held_s)
            await asyncio.to_thread(pg.start)
            final = await bot.final_message(timeout_s=120)
            shown = time.monotonic() - began
            assert await healthz(bot) == 200
            job = the_job(settings, copy)
        print(
            f"\nPostgreSQL down {down_s} s: the job's message {shown:.1f} s after it stopped:"
            f" {final['text']!r}; the job {job['state']}: {job['error']}"
        )
    assert await source_states(docker, prod) == {"running"}
    helpers = await docker.list_containers(labels=["clonebot.helper", f"{JOB}={job['id']}"])
    assert helpers == []
    if held_s == 0:  # the job never noticed: its outcome waited for the database
        assert final["text"].startswith(f":white_check_mark: *{copy}* is running at"), final
        assert job["state"] == "succeeded"
        assert await source_states(docker, copy) == {"running"}
    else:
        assert final["text"].startswith(f":x: Cloning {prod} → {copy} failed: "), final
        assert (
            "its lease could not be renewed for 10 s: clonebot's database did not answer"
            in (final["text"])
        )
        assert "Nothing was left behind" in final["text"]
        assert job["state"] == "rolled back"
        assert await leftovers(docker, job=job["id"], clone=copy) == []


async def _engine_source(docker: DockerClient, engine: Engine) -> str:
    """A source on the test's own engine: its database restarted by the engine (a restart
    policy), its web node not (none)."""
    name = f"t{secrets.token_hex(3)}"
    await create_source(docker, name=name, web_nodes=1, db_nodes=1, db_labels={}, seed_kib=256)
    engine.docker("update", "--restart", "unless-stopped", f"{name}_db_1")
    return name


async def _engine_leftovers(docker: DockerClient, *, job: str, clone: str) -> list[str]:
    """The test's engine is its own: no helper at all may be left, nor anything of the job."""
    helpers = await docker.list_containers(labels=["clonebot.helper"])
    return await leftovers(docker, job=job, clone=clone) + [f"helper {h}" for h in helpers]


def _ended(text: str, env: str) -> bool:
    """Whether a message is the result of the job making ``env``."""
    return text.startswith(f"{DONE} *{env}*") or (text.startswith(":x:") and f"→ {env} " in text)


async def _node_states(docker: DockerClient, name: str) -> dict[str, str]:
    return {n.name: n.state for n in (await get_environment(docker, name)).nodes}


@pytest.mark.own_engines
@pytest.mark.parametrize("goes_on", ["engine-back", "engine-down"])
async def test_the_engine_restarted_mid_clone(
    routed: Settings,
    slack: SlackEmulator,
    tmp_path: Path,
    goes_on: str,
) -> None:
    """The engine stopped (its containers with it) and started again while the clone holds
    the source frozen; the job goes on once the engine is back, or while it is down (its
    rollback meets no engine): either way it fails and leaves nothing, the source is what its
    restart policy gives (never paused), serve stays healthy."""
    hold = Hold(tmp_path)
    async with own_engine(routed) as engine, DockerClient(engine.host) as docker:
        prod = await _engine_source(docker, engine)
        copy = f"{prod}-eng"
        settings = routed.model_copy(update={"docker_host": engine.host})
        async with asyncio.timeout(300), Serving(settings, slack, tmp_path, **hold.env()) as bot:
            await bot.command(OWNER, "/clone", f"{prod} {copy}")
            await hold.reached(bot)
            assert "paused" in (await _node_states(docker, prod)).values()
            began = time.monotonic()
            await asyncio.to_thread(engine.stop)
            if goes_on == "engine-down":
                hold.release()
                await asyncio.sleep(ENGINE_DOWN_S)
            await asyncio.to_thread(engine.start)
            back = time.monotonic() - began
            hold.release()
            final = await bot.final_message(timeout_s=180)
            shown = time.monotonic() - began
            assert await healthz(bot) == 200
            job = the_job(settings, copy)
            # the same serve, its engine back: a clone works again
            await bot.command(OWNER, "/clone", f"{prod} {prod}-again")
            again = await slack.wait_for(
                "chat.update",
                lambda p: _ended(str(p.get("text", "")), f"{prod}-again"),
                timeout_s=120,
            )
            assert again.params["text"].startswith(f"{DONE} *{prod}-again* is running at"), again
        print(
            f"\nthe engine answered again {back:.1f} s after its stop began; the job's "
            f"message {shown:.1f} s after: {final['text']!r}; the job {job['state']}"
        )
        assert final["text"].startswith(f":x: Cloning {prod} → {copy} failed: "), final
        assert "AssertionError" not in final["text"]
        assert job["state"] == "rolled back", job
        assert await _engine_leftovers(docker, job=job["id"], clone=copy) == []
        assert await _node_states(docker, prod) == {
            f"{prod}_db_1": "running",  # unless-stopped
            f"{prod}_web_1": "exited",  # no restart policy
        }


@pytest.mark.own_engines
@pytest.mark.parametrize("point", ["pre-copy", "start"])
async def test_the_engine_restarted_during_the_first_copy_or_the_start(
    routed: Settings,
    slack: SlackEmulator,
    tmp_path: Path,
    point: str,
) -> None:
    """The engine stopped and started again while the clone is held before its first copy
    (the copy helper running) or between starting its data stores and its web layer: the job
    ends either way; a failed one leaves nothing, a clone said to be running is; the source is
    what its restart policy gives, never paused."""
    hold = Hold(tmp_path, point)
    async with own_engine(routed) as engine, DockerClient(engine.host) as docker:
        prod = await _engine_source(docker, engine)
        copy = f"{prod}-{point}"
        settings = routed.model_copy(update={"docker_host": engine.host})
        async with asyncio.timeout(300), Serving(settings, slack, tmp_path, **hold.env()) as bot:
            await bot.command(OWNER, "/clone", f"{prod} {copy}")
            await hold.reached(bot)
            began = time.monotonic()
            await asyncio.to_thread(engine.restart)
            hold.release()
            final = await bot.final_message(timeout_s=180)
            shown = time.monotonic() - began
            assert await healthz(bot) == 200
            job = the_job(settings, copy)
        states = await _node_states(docker, prod)
        print(
            f"\nthe engine restarted at {point}: the job's message {shown:.1f} s after the stop "
            f"began: {final['text']!r}; the job {job['state']}; the source {states}"
        )
        assert "AssertionError" not in final["text"]
        assert not re.search(r"[0-9a-f]{64}", final["text"]), "a container named by its id"
        assert states[f"{prod}_db_1"] == "running", states  # unless-stopped
        assert "paused" not in states.values(), states
        if job["state"] == "succeeded":
            assert final["text"].startswith(f"{DONE} *{copy}* is running at"), final
            assert set((await _node_states(docker, copy)).values()) == {"running"}
        else:
            assert final["text"].startswith(f":x: Cloning {prod} → {copy} failed: "), final
            assert job["state"] == "rolled back", job
            assert await _engine_leftovers(docker, job=job["id"], clone=copy) == []


@pytest.mark.own_engines
async def test_the_engine_disk_filled_up_mid_clone(
    routed: Settings,
    slack: SlackEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine's disk (a 1 GiB file system of its own) filled up to the last byte while
    the clone holds the source frozen: the job fails and removes what it made, the source
    runs, serve stays healthy; once the space is back, a clone succeeds."""
    hold = Hold(tmp_path)
    async with own_engine(routed) as engine, DockerClient(engine.host) as docker:
        prod = await _engine_source(docker, engine)
        copy = f"{prod}-full"
        settings = routed.model_copy(update={"docker_host": engine.host})
        # of the 1 GiB, room for the clone is checked before it starts: the fault comes after
        monkeypatch.setenv("CLONEBOT_DISK_RESERVE", str(64 << 20))
        async with (
            asyncio.timeout(300),
            Serving(settings, slack, tmp_path, **hold.env()) as bot,
        ):
            await bot.command(OWNER, "/clone", f"{prod} {copy}")
            await hold.reached(bot)
            filler = await asyncio.to_thread(engine.fill)
            assert engine.free_bytes() < 16 << 10, engine.free_bytes()
            began = time.monotonic()
            hold.release()
            final = await bot.final_message(timeout_s=120)
            shown = time.monotonic() - began
            job = the_job(settings, copy)
            left = await _engine_leftovers(docker, job=job["id"], clone=copy)
            states = await _node_states(docker, prod)
            await asyncio.to_thread(shutil.rmtree, filler)
            assert await healthz(bot) == 200
        print(
            f"\nthe disk full: the job's message {shown:.1f} s after: {final['text']!r}; "
            f"the job {job['state']}: {job['error']}"
        )
        assert final["text"].startswith(f":x: Cloning {prod} → {copy} failed: "), final
        assert job["state"] in ("failed", "rolled back"), job
        assert left == []
        assert set(states.values()) == {"running"}, states
        after = cli(settings, "clone", prod, f"{prod}-after", "--as", OWNER)
        assert set((await _node_states(docker, f"{prod}-after")).values()) == {"running"}, after
    # the engine's networks had bridges on the host: gone with it
    assert pool_bridges() == []

"""The freeze's watchdog (services/watchdog.py), on this host's engine: it finds the engine's
socket by its answer and resumes a frozen container once its time is up, unless clonebot
removed it; clonebot never lets a watchdog it could not remove outlive the job's hold on the
source, where it would resume the source in the middle of the next freeze."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from services.docker import DockerClient
from services.errors import DockerFailed
from services.settings import Settings
from services.volumes import ensure_helper_image
from services.watchdog import MARGIN_S, guarded
from tests.conftest import IMAGE


@pytest.fixture
async def paused(docker: DockerClient, settings: Settings) -> AsyncIterator[str]:
    """A running container of the test's own, paused, as a freeze leaves a source."""
    await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
    config = {"Image": IMAGE, "Cmd": ["sleep", "600"], "Labels": {"clonebot.test": "watchdog"}}
    cid = await docker.create_container(name=f"wd-{secrets.token_hex(3)}", config=config)
    try:
        await docker.start_container(cid)
        await docker.pause_container(cid)
        yield cid
    finally:
        await docker.remove_container(cid)


async def _state(docker: DockerClient, cid: str) -> str:
    return str((await docker.inspect_container(cid))["State"]["Status"])


async def _watchdogs(docker: DockerClient, job: str) -> list[str]:
    return [c["Id"] for c in await docker.list_containers(labels=[f"clonebot.job={job}"])]


async def test_a_watchdog_removed_in_time_resumes_nothing_even_after_failed_removals(
    docker: DockerClient, settings: Settings, paused: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine refuses the watchdog's removal twice (a hiccup): clonebot tries again until
    it is gone; the container stays as clonebot left it, past the watchdog's deadline."""
    job = secrets.token_hex(4)
    remove = docker.remove_container
    refusals = 2

    async def hiccup(ref: str) -> None:
        nonlocal refusals
        if refusals and ref != paused:
            refusals -= 1
            raise DockerFailed("remove container: engine busy", status=500)
        await remove(ref)

    async with guarded(
        docker, image=settings.helper_image, how={paused: "paused"}, timeout_s=1,
        labels={"clonebot.job": job},
    ) as unguarded:  # fmt: skip
        assert unguarded is None, unguarded
        monkeypatch.setattr(docker, "remove_container", hiccup)
    assert refusals == 0 and await _watchdogs(docker, job) == []
    await asyncio.sleep(1 + MARGIN_S + 1)
    assert await _state(docker, paused) == "paused"


async def test_a_watchdog_that_cannot_be_removed_is_waited_out_and_resumes_the_source(
    docker: DockerClient, settings: Settings, paused: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its engine never takes the removal: clonebot holds on until the watchdog's deadline
    has passed (so no later freeze can meet it), by which time it has resumed the source."""
    job = secrets.token_hex(4)
    remove = docker.remove_container

    async def refused(ref: str) -> None:
        if ref != paused:
            raise DockerFailed("remove container: engine busy", status=500)
        await remove(ref)

    loop = asyncio.get_running_loop()
    async with guarded(
        docker, image=settings.helper_image, how={paused: "paused"}, timeout_s=1,
        labels={"clonebot.job": job},
    ) as unguarded:  # fmt: skip
        assert unguarded is None, unguarded
        monkeypatch.setattr(docker, "remove_container", refused)
        released = loop.time()
    waited = loop.time() - released
    assert waited >= 1 + MARGIN_S, waited
    assert await _state(docker, paused) == "running"  # the watchdog did its work
    for _ in range(50):  # and went (AutoRemove)
        if not await _watchdogs(docker, job):
            break
        await asyncio.sleep(0.2)
    assert await _watchdogs(docker, job) == []

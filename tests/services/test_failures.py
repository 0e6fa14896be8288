"""Refusals change nothing; failures and cancellation leave no trace and never a frozen source."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from services.docker import JSON, DockerClient, ExecSession
from services.environments import JOB, PROJECT, get_environment
from services.errors import (
    CloneFailed,
    DockerFailed,
    EnvironmentNotFound,
    InvalidName,
    NameTaken,
    NoNetworkRoom,
    NotEnoughDisk,
)
from services.lifecycle import clone_environment
from services.settings import Settings
from tests.conftest import MakeSource

# These tests look at the whole engine (everything on it, every helper container): they run
# alone, not beside parallel workers whose objects come and go meanwhile.
pytestmark = pytest.mark.alone


async def _inventory(docker: DockerClient) -> tuple[set[str], ...]:
    containers = {c["Id"] for c in await docker.list_containers()}
    networks = {n["Id"] for n in await docker.list_networks(labels=[])}
    volumes = {v["Name"] for v in await docker.list_volumes(labels=[])}
    images = {i["Id"] for i in await docker.list_images(labels=[JOB])}
    return containers, networks, volumes, images


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Prod-Copy", "lowercase"),
        ("1copy", "start with a lowercase letter"),
        ("dev_copy", "only lowercase letters, digits and hyphens"),
        ("dev.copy", "only lowercase letters, digits and hyphens"),
        ("a" * 64, "at most 63 characters"),
        ("copy-", "must not end with a hyphen"),
        ("", "empty"),
    ],
)
async def test_invalid_names_are_refused(
    docker: DockerClient, settings: Settings, make_source: MakeSource, name: str, reason: str
) -> None:
    source = await make_source(web_nodes=1)
    before = await _inventory(docker)
    with pytest.raises(InvalidName) as refused:
        await clone_environment(docker, settings, source=source.name, name=name)
    assert reason in refused.value.message
    assert await _inventory(docker) == before


async def test_taken_name_missing_source_and_full_disk_are_refused(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    other = await make_source(web_nodes=1)
    before = await _inventory(docker)

    with pytest.raises(NameTaken, match=f"'{other.name}' already exists"):
        await clone_environment(docker, settings, source=source.name, name=other.name)
    with pytest.raises(EnvironmentNotFound, match="no environment named 'nowhere'"):
        await clone_environment(docker, settings, source="nowhere")
    tight = settings.model_copy(update={"disk_reserve_bytes": 1 << 60})
    with pytest.raises(NotEnoughDisk, match="not enough free disk on the Docker host"):
        await clone_environment(docker, tight, source=source.name, name=f"{source.name}-big")

    assert await _inventory(docker) == before


class FullPools(DockerClient):
    """The real engine, as if its address pools held only the networks it has."""

    async def info(self) -> JSON:
        info = await super().info()
        bridge = await self.inspect_network("bridge")
        assert bridge is not None
        subnet = bridge["IPAM"]["Config"][0]["Subnet"]
        return info | {"DefaultAddressPools": [{"Base": subnet, "Size": 24}]}


async def test_a_clone_whose_networks_the_engine_cannot_make_is_refused_up_front(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    before = await _inventory(docker)
    async with FullPools(settings.docker_host) as full:
        with pytest.raises(NoNetworkRoom, match=r"address pools have room for 0 more of 1"):
            await clone_environment(full, settings, source=source.name, name=f"{source.name}-n")
    assert await _inventory(docker) == before


class FailingDocker(DockerClient):
    """The real engine, with one operation made to fail (or to wait) on purpose."""

    def __init__(self, url: str, *, fail: str, when: str = "", hold: asyncio.Event | None = None):
        super().__init__(url)
        self.fail, self.when, self.hold = fail, when, hold
        self.paused = asyncio.Event()

    async def start_container(self, ref: str) -> None:
        if self.fail == "start" and self.when in ref:
            raise DockerFailed(f"start container {ref}: injected failure")
        await super().start_container(ref)

    async def pause_container(self, ref: str) -> None:
        if self.fail == "pause":
            raise DockerFailed(f"pause container {ref}: injected failure")
        await super().pause_container(ref)
        self.paused.set()
        if self.hold is not None:
            await self.hold.wait()  # held frozen until the test cancels the job

    @asynccontextmanager
    async def exec_session(self, ref: str, cmd: list[str]) -> AsyncIterator[ExecSession]:
        # while frozen, the helper lists what changed in the source's own files
        if self.fail == "freeze" and self.paused.is_set():
            raise DockerFailed("injected failure while frozen")
        async with super().exec_session(ref, cmd) as session:
            yield session


async def _assert_nothing_left(docker: DockerClient, *, clone: str, source: str) -> None:
    label = [f"{PROJECT}={clone}"]
    assert await docker.list_containers(labels=label) == []
    assert await docker.list_networks(labels=label) == []
    assert await docker.list_volumes(labels=label) == []
    assert await docker.list_images(labels=label) == []
    assert await docker.list_containers(labels=["clonebot.helper"]) == []
    src = await get_environment(docker, source)
    assert {n.state for n in src.nodes} == {"running"}


@pytest.mark.parametrize("fail", ["start", "freeze"])
async def test_a_failure_rolls_back_everything(
    settings: Settings, make_source: MakeSource, fail: str
) -> None:
    source = await make_source()
    clone = f"{source.name}-broken"
    async with FailingDocker(settings.docker_host, fail=fail, when="-web-2") as docker:
        with pytest.raises(CloneFailed) as failed:
            await clone_environment(docker, settings, source=source.name, name=clone)
        assert "injected failure" in failed.value.message
        assert "everything the job created was removed" in failed.value.message
        await _assert_nothing_left(docker, clone=clone, source=source.name)


async def test_cancelling_during_the_freeze_unfreezes_the_source(
    settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source()
    clone = f"{source.name}-cancelled"
    hold = asyncio.Event()
    async with FailingDocker(settings.docker_host, fail="", hold=hold) as docker:
        job = asyncio.create_task(
            clone_environment(docker, settings, source=source.name, name=clone)
        )
        await asyncio.wait_for(docker.paused.wait(), timeout=60)
        src = await get_environment(docker, source.name)
        assert src.layer("db").master.state == "paused"
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        await _assert_nothing_left(docker, clone=clone, source=source.name)


async def test_a_source_that_cannot_be_paused_fails_the_clone_and_is_never_stopped(
    settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    clone = f"{source.name}-unpaused"
    async with FailingDocker(settings.docker_host, fail="pause") as docker:
        db = f"{source.name}_db_1"
        started = (await docker.inspect_container(db))["State"]["StartedAt"]
        with pytest.raises(CloneFailed, match=f"{db} could not be paused") as failed:
            await clone_environment(docker, settings, source=source.name, name=clone)
        assert "the source was left as it was" in failed.value.message
        # never the old fallback: stopped and started again (a 10 s freeze of production)
        assert (await docker.inspect_container(db))["State"]["StartedAt"] == started
        await _assert_nothing_left(docker, clone=clone, source=source.name)


async def test_a_freeze_that_lasts_too_long_is_abandoned(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    clone = f"{source.name}-slow"
    hasty = settings.model_copy(update={"freeze_timeout_s": 0.001})
    with pytest.raises(CloneFailed, match=r"took over 0.001 s \(CLONEBOT_FREEZE_TIMEOUT\)"):
        await clone_environment(docker, hasty, source=source.name, name=clone)
    await _assert_nothing_left(docker, clone=clone, source=source.name)

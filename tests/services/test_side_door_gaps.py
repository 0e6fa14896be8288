"""Gaps left in issue 9's side doors: a down environment's domain, an image a container uses, a
volume that comes just before a clone creates it. On the real engine; ``svc`` tests on SQLite
and PostgreSQL."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from sqlalchemy import select

from services.access import Request
from services.context import Services
from services.docker import DockerClient
from services.environments import JOB, PROJECT
from services.errors import BadRequest, Busy, Forbidden, NameTaken
from services.jobs import run_job, submit_delete
from services.lifecycle import clone_environment
from services.ownership import forget_environment, share_environment
from services.settings import Settings
from services.traffic.routing import add_domain, remove_domain
from storage import repositories as repo
from storage.models import DomainBinding
from tests.conftest import (
    ADMIN,
    OWNER,
    MakeSource,
    compose_labels,
    in_volume,
    read_volume,
    remove_projects,
    take_down,
)

FRIEND = "UFRIEND2"


async def test_the_owner_removes_a_down_environments_domain_then_deletes_it(
    svc: Services, make_source: MakeSource
) -> None:
    down = (await make_source(web_nodes=1, db_nodes=0)).name
    domain = f"{down}.example.com"
    await share_environment(svc, Request(OWNER), name=down, user=FRIEND, role="viewer")
    await add_domain(svc, Request(OWNER), env=down, domain=domain)
    await take_down(svc.docker, down)

    with pytest.raises(BadRequest, match=f"{down} serves {domain}: swap the domains back or"):
        await submit_delete(svc, Request(OWNER), name=down, force=False)
    with pytest.raises(Forbidden, match=f"as a viewer of {down} you may not move traffic"):
        await remove_domain(svc, Request(FRIEND), env=down, domain=domain)
    assert await remove_domain(svc, Request(OWNER), env=down, domain=domain) == domain

    async with svc.sessions() as session:
        assert (await session.scalars(select(DomainBinding.domain))).all() == []
    job = await submit_delete(svc, Request(OWNER), name=down, force=True)  # and its volume
    assert (await run_job(svc, job.id)).state == "succeeded"
    async with svc.sessions() as session:
        assert await repo.get_environment(session, down) is None, "its name is free"


async def test_an_image_a_stopped_container_uses_is_never_removed(
    docker: DockerClient, make_source: MakeSource
) -> None:
    """Delete, rollback and recovery remove clonebot's snapshot images: whatever checks they
    make first, the removal itself keeps an image a container was made from since (Docker's
    forced removal would take it from under the container)."""
    source = (await make_source(web_nodes=1, db_nodes=0)).name
    job = secrets.token_hex(6)
    image = await docker.commit_container(
        f"{source}_web_1", repo=f"clonebot-gap/{job}", tag="snap", labels={JOB: job}
    )
    other = f"o{secrets.token_hex(3)}"
    user = await docker.create_container(
        name=f"{other}_app_1",
        config={
            "Image": image,
            "Cmd": ["true"],
            "Labels": compose_labels(other, "app", 1),
            "HostConfig": {"NetworkMode": "none"},
        },
    )
    try:
        assert await docker.remove_image(image) is False, "kept"

        assert await docker.inspect_image(image) is not None
        await docker.start_container(user)
        assert await docker.wait_container(user) == 0
    finally:
        await docker.remove_container(user)
    assert await docker.remove_image(image) is True
    assert await docker.inspect_image(image) is None


class IntrudingDocker(DockerClient):
    """The real engine, where a volume of the clone's name comes once its networks are made,
    after every check of the name and before its volumes are created."""

    def __init__(self, url: str, *, volume: str) -> None:
        super().__init__(url)
        self.volume, self.made = volume, False

    async def create_network(self, config: dict[str, Any]) -> str:
        if not self.made:
            self.made = True
            await self.create_volume(name=self.volume, labels={})
            await in_volume(self, self.volume, "echo precious > /v/only-copy", write=True)
        return await super().create_network(config)


async def test_a_volume_that_comes_just_before_the_clone_creates_it_is_left_alone(
    settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=0)  # its db's volume becomes <clone>_data
    clone = f"{source.name}-late"
    async with IntrudingDocker(settings.docker_host, volume=f"{clone}_data") as docker:
        try:
            with pytest.raises(NameTaken) as refused:
                await clone_environment(docker, settings, source=source.name, name=clone)
            assert refused.value.message == (
                f"{clone} is taken: volume {clone}_data exists already"
            )
            assert await read_volume(docker, f"{clone}_data", "only-copy") == "precious\n"
            assert await docker.list_containers(labels=[f"{PROJECT}={clone}"]) == []
            assert await docker.list_networks(labels=[f"{PROJECT}={clone}"]) == []
        finally:
            await remove_projects(docker, {clone})  # what a clone made, had it gone ahead
            if docker.made:
                await docker.remove_volume(f"{clone}_data")


class RacingDocker(IntrudingDocker):
    """The real engine, where the volume comes between the clone's last check of the name and
    its create (the check sees nothing; Docker's create then returns the intruder as it is)."""

    async def create_network(self, config: dict[str, Any]) -> str:
        return await DockerClient.create_network(self, config)

    async def inspect_volume(self, name: str) -> dict[str, Any] | None:
        if name == self.volume and not self.made:
            self.made = True
            await self.create_volume(name=self.volume, labels={})
            await in_volume(self, self.volume, "echo precious > /v/only-copy", write=True)
            return None
        return await super().inspect_volume(name)


async def test_a_volume_that_comes_between_the_check_and_the_create_is_left_alone(
    settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=0)
    clone = f"{source.name}-race"
    async with RacingDocker(settings.docker_host, volume=f"{clone}_data") as docker:
        try:
            with pytest.raises(NameTaken, match=f"volume {clone}_data exists already"):
                await clone_environment(docker, settings, source=source.name, name=clone)
            assert docker.made
            assert await read_volume(docker, f"{clone}_data", "only-copy") == "precious\n"
            assert await docker.list_containers(labels=[f"{PROJECT}={clone}"]) == []
        finally:
            await remove_projects(docker, {clone})
            if docker.made:
                await docker.remove_volume(f"{clone}_data")


async def test_forget_is_refused_while_a_job_uses_the_environment(
    svc: Services, make_source: MakeSource
) -> None:
    down = (await make_source(web_nodes=1)).name
    # recorded (as any first action records it), then brought down
    await share_environment(svc, Request(OWNER), name=down, user=FRIEND, role="viewer")
    await take_down(svc.docker, down)
    job = await submit_delete(svc, Request(OWNER), name=down, force=True)

    with pytest.raises(Busy, match=f"^{down} is busy: delete, job {job.id[:4]}"):
        await forget_environment(svc, Request(ADMIN), name=down)

    async with svc.sessions() as session:
        assert await repo.get_environment(session, down) is not None, "the record is kept"

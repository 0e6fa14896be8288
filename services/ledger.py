"""What a job created, so that a failure can remove exactly that, newest first."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from services.docker import JSON, DockerClient
from services.environments import JOB
from services.errors import ClonebotError, CloneFailed, DockerFailed, DockerUnavailable

log = logging.getLogger(__name__)
ENGINE_BACK_S = 120.0  # an engine restarting is waited for this long to remove a job's remains


@asynccontextmanager
async def undo_on_failure(
    undo: Callable[[], Awaitable[None]],
    *,
    step: str | Callable[[], str],
    passthrough: tuple[type[Exception], ...] = (),
) -> AsyncIterator[None]:
    """Run the block; should it fail or be cancelled, ``undo`` what it made, then raise.

    The undo runs to its end even when the job is cancelled meanwhile. A failure is raised as
    ``CloneFailed`` naming ``step`` (a callable names the step running when it failed);
    cancellation, and the ``passthrough`` errors, are raised as they are.
    """
    try:
        yield
    except (Exception, asyncio.CancelledError) as exc:
        await asyncio.shield(undo())
        if isinstance(exc, (asyncio.CancelledError, *passthrough)):
            raise
        cause = exc.message if isinstance(exc, ClonebotError) else f"{type(exc).__name__}: {exc}"
        failed = step if isinstance(step, str) else step()
        raise CloneFailed(step=failed, cause=cause) from exc


class Ledger:
    def __init__(self, docker: DockerClient) -> None:
        self._docker = docker
        self.containers: list[str] = []
        self.networks: list[str] = []
        self.volumes: list[str] = []
        self.images: list[str] = []

    def add_container(self, ref: str) -> None:
        self.containers.append(ref)

    def add_network(self, ref: str) -> None:
        self.networks.append(ref)

    def add_volume(self, ref: str) -> None:
        self.volumes.append(ref)

    def add_image(self, ref: str) -> None:
        self.images.append(ref)

    async def create_container(
        self, *, name: str, config: JSON, networks: list[tuple[str, list[str]]]
    ) -> str:
        """Create a container on its first network, then connect the others with aliases."""
        cid = await self._docker.create_container(name=name, config=config)
        self.add_container(cid)
        for network, aliases in networks[1:]:
            await self._docker.connect_network(network=network, container=cid, aliases=aliases)
        return cid

    async def rollback(self) -> None:
        """Remove everything recorded; containers first, since they hold the rest."""
        for remove, refs in (
            (self._docker.remove_container, self.containers),
            (self._docker.remove_network, self.networks),
            (self._docker.remove_volume, self.volumes),
            (self._docker.remove_image, self.images),
        ):
            for ref in reversed(refs):
                try:
                    await remove(ref)
                except ClonebotError as exc:
                    if getattr(exc, "status", 0) != 404:
                        log.warning("rollback could not remove %s: %s", ref, exc.message)
            refs.clear()


_Lister = Callable[..., Awaitable[list[JSON]]]
_Remover = Callable[[str], Awaitable[object]]


async def remove_job_resources(docker: DockerClient, job_id: str) -> int:
    """Remove every container, network, volume and image labelled with the job; how many."""
    label = [f"{JOB}={job_id}"]
    # Swarm services and containers first: they hold the networks, volumes and images after
    kinds: list[tuple[_Lister, _Remover, str]] = [
        (functools.partial(list_services, docker), docker.remove_service, "ID"),
        (docker.list_containers, docker.remove_container, "Id"),
        (docker.list_networks, docker.remove_network, "Id"),
        (docker.list_volumes, docker.remove_volume, "Name"),
        (docker.list_images, docker.remove_image, "Id"),
    ]
    removed = 0
    for list_all, remove, key in kinds:
        for found in await list_all(labels=label):
            await remove(found[key])
            removed += 1
    return removed


async def list_services(docker: DockerClient, *, labels: list[str]) -> list[JSON]:
    """A Swarm manager's services with these labels; none on an engine that is no manager."""
    try:
        return await docker.list_services(labels=labels)
    except DockerFailed as exc:
        if exc.status == NOT_MANAGER:
            return []
        raise


NOT_MANAGER = 503  # Docker's answer to a Swarm call on an engine that is no Swarm manager


async def sweep_job(docker: DockerClient, job_id: str, *, within_s: float = ENGINE_BACK_S) -> int:
    """``remove_job_resources``, tried again every second while the engine does not answer
    (restarting: a rollback that met it gone left the job's containers, helpers and the rest)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await remove_job_resources(docker, job_id)
        except DockerUnavailable:
            if time.monotonic() + 1 > deadline:
                raise
        await asyncio.sleep(1)

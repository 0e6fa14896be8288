"""What a job created, so that a failure can remove exactly that, newest first."""

from __future__ import annotations

import logging

from services.docker import JSON, DockerClient
from services.errors import ClonebotError

log = logging.getLogger(__name__)


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

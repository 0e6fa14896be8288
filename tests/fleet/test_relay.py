"""Volume data copied from a helper on one engine to a helper on another, relayed by clonebot
over the engines' TLS API connections (services/relay.py): exact, as a copy on one engine is
(names, types, modes, owners, times, links, holes, xattrs and ACLs), both ways of rsync's
protocol, several connections at once."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from services.docker import DockerClient, gather_all
from services.errors import DockerFailed
from services.fleet import EngineSpec
from services.freeze import pause
from services.relay import DEST, RSH, RsyncRelay
from services.settings import Settings
from services.volumes import FinalPass, Watch, half_helper, pre_copy
from tests.conftest import IMAGE, exec_output
from tests.fleet.hosts import Fleet as Hosts
from tests.services.test_snapshot_exact import (
    _ATTRS,
    _BEFORE_FREEZE,
    _CHURN,
    _DURING_PRE_COPY,
    _SEED,
    assert_same,
    in_helper,
    listing,
)

pytestmark = [pytest.mark.alone, pytest.mark.own_engines]


def _client(hosts: Hosts, i: int) -> DockerClient:
    host = hosts.hosts[i]
    return EngineSpec(host.name, host.tcp_url, host.tls_dir).connect()


@dataclass
class Seeded:
    volumes: list[str]  # on east, seeded as the exact-snapshot tests' source
    targets: list[str]  # on west, empty
    container: str  # runs beside the volumes at /v0 and /v1, as a database would


@pytest.fixture
async def seeded(fleet_hosts: Hosts, settings: Settings) -> AsyncIterator[Seeded]:
    east, west = _client(fleet_hosts, 0), _client(fleet_hosts, 1)
    tag = secrets.token_hex(3)
    sources = [await east.create_volume(name=f"frelay{tag}_{i}", labels={}) for i in range(2)]
    targets = [await west.create_volume(name=f"frelay{tag}_{i}", labels={}) for i in range(2)]
    binds = [f"{v}:/v{i}" for i, v in enumerate(sources)]
    config = {"Image": IMAGE, "Cmd": ["sleep", "100000"], "HostConfig": {"Binds": binds}}
    cid = await east.create_container(name=f"frelay{tag}", config=config)
    try:
        await east.start_container(cid)
        await exec_output(east, cid, _SEED)
        await in_helper(east, settings, binds, _ATTRS)
        yield Seeded(sources, targets, cid)
    finally:
        await east.remove_container(cid)
        await gather_all(*(east.remove_volume(v) for v in sources))
        await gather_all(*(west.remove_volume(v) for v in targets))
        await east.close()
        await west.close()


@asynccontextmanager
async def relayed(
    hosts: Hosts, settings: Settings, seeded: Seeded
) -> AsyncIterator[tuple[DockerClient, str, RsyncRelay]]:
    """The sender on east, the receiver on west and the relay between: (east, sender, relay)."""
    east, west = _client(hosts, 0), _client(hosts, 1)
    image, labels = settings.helper_image, {"clonebot.test": "relay"}
    name = seeded.container[:12]
    async with (
        half_helper(east, image=image, name=f"{name}-from", sources=seeded.volumes,
                    labels=labels) as sender,
        half_helper(west, image=image, name=f"{name}-to", targets=seeded.targets,
                    labels=labels) as receiver,
        RsyncRelay(east, sender, west, receiver) as relay,
    ):  # fmt: skip
        yield east, sender, relay
    await east.close()
    await west.close()


async def test_volumes_copied_to_another_engine_through_the_relay_are_exact(
    fleet_hosts: Hosts, settings: Settings, seeded: Seeded
) -> None:
    async with relayed(fleet_hosts, settings, seeded) as (east, sender, relay):

        async def copy(i: int) -> str:
            cmd = f"rsync -aHAXS --numeric-ids -e {RSH} /from/{i}/ {DEST}/to/{i}/; echo rc $?"
            return await exec_output(east, sender, cmd)

        copied = await gather_all(copy(0), copy(1))  # two connections at once
    assert [c.strip().splitlines()[-1] for c in copied] == ["rc 0", "rc 0"], copied
    assert relay.failure is None
    await _assert_copied(fleet_hosts, settings, seeded)


async def _assert_copied(hosts: Hosts, settings: Settings, seeded: Seeded) -> None:
    east, west = _client(hosts, 0), _client(hosts, 1)
    try:
        for source, target in zip(seeded.volumes, seeded.targets, strict=True):
            assert_same(
                await listing(east, settings, source), await listing(west, settings, target)
            )
    finally:
        await east.close()
        await west.close()


@pytest.mark.parametrize("watch", ["inotify", "scan"])
async def test_a_copy_to_another_engine_under_renames_and_deletes_equals_the_frozen_source(
    watch: Watch, fleet_hosts: Hosts, settings: Settings, seeded: Seeded
) -> None:
    """The pre-copy while the source works, then the final pass during its freeze, both to
    the other engine: renames, deletes, touch -d, chmod, chown, a same-size same-mtime
    rewrite, hard links, xattrs, a writer renaming and deleting all along."""
    warnings: list[str] = []
    async with relayed(fleet_hosts, settings, seeded) as (east, sender, relay):
        churn = asyncio.create_task(exec_output(east, seeded.container, _CHURN))
        try:
            await pre_copy(
                east, helper=sender, count=2, on_bytes=lambda _: None, watch=watch, remote=True
            )
            await in_helper(east, settings, [f"{seeded.volumes[0]}:/v0"], _DURING_PRE_COPY)
            async with FinalPass(
                east, helper=sender, count=2, on_warning=warnings.append, remote=True
            ) as final:
                await exec_output(east, seeded.container, _BEFORE_FREEZE)
                await pause(east, seeded.container)  # the freeze, as a clone's
                try:
                    await final.fire()
                    await _assert_copied(fleet_hosts, settings, seeded)
                finally:
                    await east.unpause_container(seeded.container)
        finally:
            churn.cancel()
    assert relay.failure is None
    assert [w for w in warnings if not w.startswith("too many changes at once")] == []


async def test_an_image_is_carried_to_another_engine_by_its_id_never_pulled(
    fleet_hosts: Hosts, docker: DockerClient
) -> None:
    west = _client(fleet_hosts, 1)
    found = await docker.inspect_image("clonebot-test/haproxy:latest")  # not on the hosts
    assert found is not None
    image = found["Id"]
    try:
        assert await west.inspect_image(image) is None
        await docker.carry_image(image, to=west)
        carried = await west.inspect_image(image)
        assert carried is not None and carried["Id"] == image
        with pytest.raises(DockerFailed, match=r"carry image sha256:0000000000.* no such image"):
            await docker.carry_image("sha256:" + "0" * 64, to=west)
    finally:
        await west.remove_image(image)
        await west.close()

"""Refresh and delete, on the real Docker engine."""

from __future__ import annotations

import pytest

from services.docker import DockerClient
from services.environments import PROJECT, get_environment
from services.errors import NotAClone
from services.lifecycle import clone_environment, delete_environment, refresh_clone
from services.settings import Settings
from tests.conftest import MakeSource, exec_output


async def test_refresh_recopies_the_source_data(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    made = await clone_environment(docker, settings, source=source.name)
    clone = made.environment
    src_db, clone_db = f"{source.name}_db_1", f"{clone}-db-1"
    await exec_output(docker, src_db, "echo new > /data/fresh; echo v2 > /etc/db/db.conf")
    await exec_output(docker, clone_db, "echo mine > /data/clone-only")
    web_before = (await get_environment(docker, clone)).layer("web").master.id

    result = await refresh_clone(docker, settings, name=clone)

    assert result.state == "succeeded"
    assert 0 < result.freeze_ms < 5000
    assert await exec_output(docker, clone_db, "cat /data/fresh /etc/db/db.conf") == "new\nv2"
    assert await exec_output(docker, clone_db, "test ! -e /data/clone-only && echo gone") == "gone"
    env = await get_environment(docker, clone)
    assert {n.state for n in env.nodes} == {"running"}
    assert env.layer("web").master.id == web_before, "stateless layers are left alone"
    assert sorted(n.name for n in env.nodes) == [clone_db, f"{clone}-web-1"]
    src = await get_environment(docker, source.name)
    assert {n.state for n in src.nodes} == {"running"}


async def test_refresh_refuses_a_source(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    with pytest.raises(NotAClone, match="refresh only works on clones"):
        await refresh_clone(docker, settings, name=source.name)


async def test_delete_removes_the_clone_and_keeps_the_source(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_labels={"clonebot.volume.data": "share"})
    made = await clone_environment(docker, settings, source=source.name)

    await delete_environment(docker, name=made.environment)

    label = [f"{PROJECT}={made.environment}"]
    assert await docker.list_containers(labels=label) == []
    assert await docker.list_networks(labels=label) == []
    assert await docker.list_volumes(labels=label) == []
    assert await docker.list_images(labels=label) == []
    assert await docker.inspect_volume(source.volume) is not None, "a shared volume is kept"
    src = await get_environment(docker, source.name)
    assert {n.state for n in src.nodes} == {"running"}
    # a delete job that runs again (recovered) finds nothing left, and succeeds
    assert (await delete_environment(docker, name=made.environment)).nodes == ()


async def test_delete_refuses_a_source_without_force(
    docker: DockerClient, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    with pytest.raises(NotAClone, match="without --force"):
        await delete_environment(docker, name=source.name)
    assert (await get_environment(docker, source.name)).nodes

"""Renaming an environment on the real Docker engine: same data, same ports, new name."""

from __future__ import annotations

import pytest

from services.access import Request
from services.context import Services
from services.docker import DockerClient
from services.environments import JOB, PROJECT, get_environment
from services.errors import CloneFailed, EnvironmentNotFound, Forbidden, InvalidName, NameTaken
from services.jobs import run_job, submit_clone, submit_delete, submit_rename
from services.lifecycle import rename_environment
from services.progress import Event, StepStarted
from services.settings import Settings
from services.traffic.router import env_backend, router_state
from services.traffic.routing import add_domain
from storage import repositories as repo
from tests.conftest import OWNER, MakeSource, exec_output, in_volume


async def _rename(svc: Services, name: str, new_name: str, *, user: str = OWNER) -> None:
    job = await submit_rename(svc, Request(user), name=name, new_name=new_name)
    done = await run_job(svc, job.id)
    assert done.state == "succeeded", done.error


async def test_a_renamed_environment_keeps_its_data_ports_and_domains(
    svc: Services, make_source: MakeSource
) -> None:
    docker = svc.docker
    source = await make_source(web_nodes=1)
    old, new = source.name, f"{source.name}-renamed"
    await exec_output(docker, f"{old}_db_1", "echo v2 > /etc/db/db.conf; echo kept > /data/kept")
    await add_domain(svc, Request(OWNER), env=old, domain="shop.test")

    await _rename(svc, old, new)

    env = await get_environment(docker, new)
    assert sorted(n.name for n in env.nodes) == [f"{new}-db-1", f"{new}-web-1"]
    assert {n.state for n in env.nodes} == {"running"}
    db = f"{new}-db-1"
    assert await exec_output(docker, db, "cat /etc/db/db.conf /data/kept /anon/file") == (
        "v2\nkept\nanon"
    ), "the file system, the named and the anonymous volume all kept"
    volumes = {m.source for m in env.layer("db").master.volumes}
    assert source.volume in volumes, "the same volume, not a copy"
    bindings = env.layer("db").master.attrs["HostConfig"]["PortBindings"]["5432/tcp"]
    assert bindings[0]["HostPort"] == str(source.db_port), "the same host port"
    web_env = env.layer("web").master.attrs["Config"]["Env"]
    assert f"DB_URL=postgres://{db}:5432/app" in web_env
    assert f"SITE=http://{new}.clonebot.test/" in web_env
    with pytest.raises(EnvironmentNotFound):
        await get_environment(docker, old)
    for lister in (docker.list_containers, docker.list_networks):
        assert await lister(labels=[f"{PROJECT}={old}"]) == []

    state = await router_state(svc)
    assert state.hosts[f"{new}.clonebot.test"] == env_backend(new)
    assert f"{old}.clonebot.test" not in state.hosts, "the internal domain moved"
    assert state.hosts["shop.test"] == env_backend(new), "custom domains stay bound"
    async with svc.sessions() as session:
        record = await repo.get_environment(session, new)
        assert record is not None and record.owner == OWNER and record.state == "ready"
        assert await repo.get_environment(session, old) is None


async def test_refused_renames_change_nothing(svc: Services, make_source: MakeSource) -> None:
    docker = svc.docker
    source, other = await make_source(web_nodes=1), await make_source(web_nodes=1)
    before = {n.id for n in (await get_environment(docker, source.name)).nodes}
    for user, new_name, error in [
        (OWNER, "Bad_Name", InvalidName),
        (OWNER, other.name, NameTaken),
        ("USTRANGER", f"{source.name}-x", Forbidden),
    ]:
        with pytest.raises(error):
            await submit_rename(svc, Request(user), name=source.name, new_name=new_name)
    env = await get_environment(docker, source.name)
    assert {n.id for n in env.nodes} == before
    assert {n.state for n in env.nodes} == {"running"}
    async with svc.sessions() as session:
        assert await repo.get_environment(session, f"{source.name}-x") is None


async def test_a_failed_rename_brings_the_environment_back(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    old, new = source.name, f"{source.name}-renamed"
    before = {n.id for n in (await get_environment(docker, old)).nodes}

    def fail_at_start(event: Event) -> None:
        if isinstance(event, StepStarted) and event.step == "start":
            raise RuntimeError("the engine went away")

    with pytest.raises(CloneFailed, match="the engine went away"):
        await rename_environment(docker, settings, name=old, new_name=new, emit=fail_at_start)

    env = await get_environment(docker, old)
    assert {n.id for n in env.nodes} == before, "the very same containers"
    assert {n.state for n in env.nodes} == {"running"}
    assert await exec_output(docker, f"{old}_db_1", "cat /anon/file") == "anon"
    for lister in (docker.list_containers, docker.list_networks, docker.list_images):
        assert await lister(labels=[f"{PROJECT}={new}"]) == []


async def test_a_renamed_clone_is_deleted_with_all_it_had(
    svc: Services, make_source: MakeSource
) -> None:
    docker = svc.docker
    source = await make_source(web_nodes=1)
    me = Request(OWNER)
    clone = await run_job(svc, (await submit_clone(svc, me, source=source.name, name=None)).id)
    old, new = clone.environment, f"{clone.environment}-renamed"
    made_volumes = {v["Name"] for v in await docker.list_volumes(labels=[f"{PROJECT}={old}"])}
    assert made_volumes

    await _rename(svc, old, new)
    assert (await get_environment(docker, new)).cloned_from == source.name, "still its clone"
    delete = await submit_delete(svc, me, name=new, force=False)
    assert (await run_job(svc, delete.id)).state == "succeeded"

    for volume in made_volumes:
        assert await docker.inspect_volume(volume) is None
    for project in (old, new):
        for lister in (docker.list_containers, docker.list_networks, docker.list_images):
            assert await lister(labels=[f"{PROJECT}={project}"]) == []
    assert await docker.list_images(labels=[f"{JOB}={clone.id}"]) == []
    assert await in_volume(docker, source.volume, "test -s /v/seed && echo kept") == "kept\n"
    assert {n.state for n in (await get_environment(docker, source.name)).nodes} == {"running"}

"""Side doors (issue 9, points 2, 3, 5, 7): a name held by what is left of an environment, an
environment that is down keeping its owner, refresh needing the right on its source, and delete
leaving what others use. On the real engine; the ``svc`` tests on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import secrets
import time

import pytest
from sqlalchemy import select

from services.access import Request
from services.catalog import visible_environments
from services.context import Services
from services.docker import DockerClient
from services.environments import PROJECT, get_environment
from services.errors import BadRequest, Forbidden, NameTaken
from services.jobs import run_job, submit_clone, submit_delete, submit_refresh, submit_rename
from services.lifecycle import clone_environment, delete_environment
from services.ownership import (
    bind_channel,
    forget_environment,
    hand_over_environment,
    share_environment,
)
from services.settings import Settings
from services.traffic.routing import add_domain
from storage import repositories as repo
from storage.models import DomainBinding, Job
from tests.conftest import (
    ADMIN,
    IMAGE,
    OWNER,
    MakeSource,
    compose_labels,
    exec_output,
    in_volume,
    read_volume,
    take_down,
)

FRIEND, NEW_OWNER = "UFRIEND1", "UNEWOWNER1"


async def _compose_volume(docker: DockerClient, *, project: str, short: str) -> str:
    """A volume as `docker compose up` makes it (and `docker compose down` leaves it), with
    data in it."""
    name = await docker.create_volume(
        name=f"{project}_{short}",
        labels={PROJECT: project, "com.docker.compose.volume": short},
    )
    await in_volume(docker, name, "echo precious > /v/only-copy", write=True)
    return name


async def _pauses(docker: DockerClient, *, container: str, since: float) -> list[str]:
    """The engine's pause and stop events of ``container`` from ``since`` until now."""
    filters = {"event": ["pause", "stop"], "container": [container]}
    params = {
        "since": f"{since:.6f}",
        "until": f"{time.time():.6f}",
        "filters": json.dumps(filters),
    }
    async with docker.api._query("events", params=params) as resp:
        return [line for line in (await resp.text()).splitlines() if line.strip()]


async def _job(svc: Services, job_id: str) -> Job:
    async with svc.sessions() as session:
        job = await repo.get_job(session, job_id)
    assert job is not None
    return job


# -- 2: a name is held by anything of its Compose project ---------------------------------------
async def test_a_clone_into_a_name_whose_volume_survives_is_refused_and_the_data_kept(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)  # its db's volume would become <name>_data
    qa, late = f"q{secrets.token_hex(3)}", f"l{secrets.token_hex(3)}"
    volumes: list[str] = []
    try:
        volumes.append(await _compose_volume(svc.docker, project=qa, short="data"))

        with pytest.raises(NameTaken) as refused:
            await submit_clone(svc, Request(OWNER), source=source.name, name=qa)
        assert refused.value.message == f"{qa} is taken: volume {qa}_data"
        with pytest.raises(NameTaken, match=f"{qa} is taken: volume {qa}_data"):
            await submit_rename(svc, Request(OWNER), name=source.name, new_name=qa)

        # a volume that comes between the request and its job: refused when the job runs
        job = await submit_clone(svc, Request(OWNER), source=source.name, name=late)
        volumes.append(await _compose_volume(svc.docker, project=late, short="data"))
        with pytest.raises(NameTaken, match=f"{late} is taken: volume {late}_data"):
            await run_job(svc, job.id)
        assert (await _job(svc, job.id)).state == "failed"

        for name, volume in zip((qa, late), volumes, strict=True):
            assert await read_volume(svc.docker, volume, "only-copy") == "precious\n"
            assert await svc.docker.list_containers(labels=[f"{PROJECT}={name}"]) == []
            async with svc.sessions() as session:
                assert await repo.get_environment(session, name) is None
        # the default name passes over a held one
        volumes.append(
            await _compose_volume(svc.docker, project=f"{source.name}-clone1", short="data")
        )
        default = await submit_clone(svc, Request(OWNER), source=source.name, name=None)
        assert default.environment == f"{source.name}-clone2"
    finally:
        for volume in volumes:
            await svc.docker.remove_volume(volume)


# -- 3: an environment that is down keeps its record ---------------------------------------------
async def test_a_down_environment_keeps_its_owner_until_an_admin_forgets_it(
    svc: Services, make_source: MakeSource
) -> None:
    down = (await make_source(web_nodes=1)).name
    other = (await make_source(web_nodes=1, db_nodes=0)).name
    domain = f"{down}.example.com"
    await share_environment(svc, Request(OWNER), name=down, user=FRIEND, role="viewer")
    await add_domain(svc, Request(OWNER), env=down, domain=domain)
    await take_down(svc.docker, down)

    # someone with no right on it clones into its name: refused, by its volume, then its record
    with pytest.raises(NameTaken, match=f"^{down} is taken: volume {down}_data"):
        await submit_clone(svc, Request(ADMIN), source=other, name=down)
    for volume in await svc.docker.list_volumes(labels=[f"{PROJECT}={down}"]):
        await svc.docker.remove_volume(volume["Name"])
    held = f"^{down} is taken: {down} is down; its record keeps its owner"
    with pytest.raises(NameTaken, match=held):
        await submit_clone(svc, Request(ADMIN), source=other, name=down)
    with pytest.raises(NameTaken, match=held):
        await submit_rename(svc, Request(OWNER), name=other, new_name=down)

    async with svc.sessions() as session:
        record = await repo.get_environment(session, down)
        assert record is not None
        assert record.owner == OWNER
        assert [(c.user, c.role) for c in record.collaborators] == [(FRIEND, "viewer")]
        bound = (await session.scalars(select(DomainBinding.domain))).all()
        assert bound == [domain]
    for user, role in ((OWNER, "owner"), (FRIEND, "viewer")):
        [view] = [v for v in await visible_environments(svc, user=user) if v.name == down]
        assert (view.down, view.role, view.owner, view.domains) == (True, role, OWNER, (domain,))
        assert not view.may_clone

    with pytest.raises(Forbidden, match="only an admin may forget an environment"):
        await forget_environment(svc, Request(OWNER), name=down)
    with pytest.raises(BadRequest, match=f"{other} has containers, so it is not down"):
        await forget_environment(svc, Request(ADMIN), name=other)
    assert await forget_environment(svc, Request(ADMIN), name=down) == []

    async with svc.sessions() as session:
        assert await repo.get_environment(session, down) is None
        assert (await session.scalars(select(DomainBinding.domain))).all() == []
        audit = await repo.list_audit(session, environment=down)
    assert [(e.actor, e.action, e.allowed) for e in audit[:2]] == [
        (ADMIN, "forget", True),
        (OWNER, "forget", False),
    ]
    assert audit[0].detail == {"owner": OWNER}
    job = await submit_clone(svc, Request(ADMIN), source=other, name=down)
    assert job.environment == down


async def test_what_a_down_environment_left_goes_only_with_force(
    svc: Services, make_source: MakeSource
) -> None:
    down = (await make_source(web_nodes=0)).name
    await share_environment(svc, Request(OWNER), name=down, user=FRIEND, role="viewer")
    await take_down(svc.docker, down)

    with pytest.raises(BadRequest) as refused:
        await submit_delete(svc, Request(OWNER), name=down, force=False)
    assert refused.value.message.startswith(f"{down} is down and left volume {down}_data")
    assert "delete it with --force" in refused.value.message
    assert await read_volume(svc.docker, f"{down}_data", "seed")  # still there
    with pytest.raises(Forbidden, match=f"as a viewer of {down} you may not delete it"):
        await submit_delete(svc, Request(FRIEND), name=down, force=True)

    job = await submit_delete(svc, Request(OWNER), name=down, force=True)
    assert (await run_job(svc, job.id)).state == "succeeded"

    assert await svc.docker.list_volumes(labels=[f"{PROJECT}={down}"]) == []
    async with svc.sessions() as session:
        assert await repo.get_environment(session, down) is None, "its name is free"


# -- 5: a refresh needs the right to clone its source --------------------------------------------
@pytest.mark.slow  # a clone first
async def test_a_refresh_by_a_clone_owner_who_lost_the_source_is_refused_at_submit_and_at_run(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=0)
    clone = (
        await clone_environment(
            svc.docker, svc.settings, source=source.name, name=f"{source.name}-mine", owner=OWNER
        )
    ).environment
    src_db = f"{source.name}_db_1"
    await exec_output(svc.docker, src_db, "echo after-the-clone > /data/fresh")
    started = (await svc.docker.inspect_container(src_db))["State"]["StartedAt"]
    since = time.time()
    queued = await submit_refresh(svc, Request(OWNER), name=clone)  # allowed, for now

    await hand_over_environment(svc, Request(OWNER), name=source.name, new_owner=NEW_OWNER)

    reason = f"{source.name} belongs to <@{NEW_OWNER}>; ask them to share it with you"
    with pytest.raises(Forbidden) as at_submit:
        await submit_refresh(svc, Request(OWNER), name=clone)
    assert at_submit.value.message == reason
    with pytest.raises(Forbidden) as at_run:
        await run_job(svc, queued.id)
    assert at_run.value.message == reason
    job = await _job(svc, queued.id)
    assert (job.state, job.error, job.steps) == ("failed", reason, [])
    db = await svc.docker.inspect_container(src_db)
    assert (db["State"]["Status"], db["State"]["StartedAt"]) == ("running", started)
    assert await _pauses(svc.docker, container=src_db, since=since) == [], "never frozen"
    clone_db = f"{clone}-db-1"
    assert await exec_output(svc.docker, clone_db, "test ! -e /data/fresh && echo old") == "old"

    # and the source's channel binding holds for a refresh as for a clone
    await hand_over_environment(svc, Request(NEW_OWNER), name=source.name, new_owner=OWNER)
    await bind_channel(svc, Request(OWNER), name=source.name, channel="CBOUND1")
    with pytest.raises(Forbidden, match=f"{source.name} takes commands only in <#CBOUND1>"):
        await submit_refresh(svc, Request(OWNER, channel="COTHER1"), name=clone)
    async with svc.sessions() as session:
        audit = await repo.list_audit(session, environment=source.name)
    refusals = [(e.actor, e.action) for e in audit if not e.allowed]
    assert refusals == [(OWNER, "clone")] * 3


# -- 7 (and 2): delete leaves what others use ----------------------------------------------------
@pytest.mark.slow  # a clone first
async def test_delete_keeps_an_image_volume_and_network_another_environment_uses(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=0)
    clone = (await clone_environment(docker, settings, source=source.name)).environment
    snapshot = (await get_environment(docker, clone)).layer("db").master.image_id
    other = f"o{secrets.token_hex(3)}"
    # stopped containers of another environment: one made from the clone's snapshot image,
    # one on the clone's volume and network
    on_image = await _stopped(
        docker, name=f"{other}_app_1", image=snapshot, host={}, reads="/etc/db/db.conf"
    )
    on_data = await _stopped(
        docker,
        name=f"{other}_app_2",
        image=IMAGE,
        reads="/data/seed",
        host={
            "NetworkMode": f"{clone}_default",
            "Mounts": [{"Type": "volume", "Source": f"{clone}_data", "Target": "/data"}],
        },
    )
    try:
        await delete_environment(docker, name=clone)

        assert await docker.list_containers(labels=[f"{PROJECT}={clone}"]) == []
        assert await docker.inspect_image(snapshot) is not None
        assert await docker.inspect_volume(f"{clone}_data") is not None
        assert await docker.inspect_network(f"{clone}_default") is not None
        for cid in (on_image, on_data):
            await docker.start_container(cid)
            assert await docker.wait_container(cid) == 0, await docker.container_logs(cid)
    finally:
        for cid in (on_image, on_data):
            await docker.remove_container(cid)
    assert await docker.inspect_image(IMAGE) is not None
    assert (await get_environment(docker, source.name)).nodes


async def _stopped(
    docker: DockerClient, *, name: str, image: str, host: dict[str, object], reads: str
) -> str:
    """A container of another Compose project, created and never started, that checks the
    file ``reads`` is there when it starts."""
    project = name.split("_")[0]
    return await docker.create_container(
        name=name,
        config={
            "Image": image,
            "Cmd": ["test", "-s", reads],
            "Labels": compose_labels(project, "app", int(name.rsplit("_", 1)[1])),
            "HostConfig": {"NetworkMode": "none", **host},
        },
    )

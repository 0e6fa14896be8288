"""Durable clone jobs on SQLite and PostgreSQL, with real Docker sources."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
from contextlib import AsyncExitStack

import pytest
from sqlalchemy import func, select

from services.access import Request
from services.context import Services, open_services
from services.docker import DockerClient
from services.environments import PROJECT, get_environment
from services.errors import BadRequest, Forbidden, NameTaken, NotEnoughDisk
from services.jobs import run_job, submit_clone
from services.ownership import adopt_environment, bind_channel, share_environment
from services.settings import Settings
from storage import repositories as repo
from storage.db import create_engine, sessionmaker
from storage.models import EnvironmentRecord, Job, utcnow
from tests.conftest import ADMIN, IMAGE, OWNER, MakeSource, compose_labels, remove_projects

STRANGER = "USTRANGER"


async def _jobs_for(svc: Services, name: str) -> list[Job]:
    async with svc.sessions() as session:
        return list((await session.scalars(select(Job).where(Job.environment == name))).all())


async def _record(svc: Services, name: str) -> EnvironmentRecord | None:
    async with svc.sessions() as session:
        return await repo.get_environment(session, name)


async def _job(svc: Services, job_id: str) -> Job:
    async with svc.sessions() as session:
        job = await repo.get_job(session, job_id)
    assert job is not None
    return job


async def _docker_objects(docker: DockerClient, name: str) -> list[str]:
    """Everything Docker has that is labelled as part of the environment ``name``."""
    label = [f"{PROJECT}={name}"]
    found = [c["Names"][0] for c in await docker.list_containers(labels=label)]
    found += [n["Name"] for n in await docker.list_networks(labels=label)]
    found += [v["Name"] for v in await docker.list_volumes(labels=label)]
    return found


# -- (a) a clone job, from submission to a running clone --------------------------------------
async def test_a_clone_is_recorded_then_run(svc: Services, make_source: MakeSource) -> None:
    source = await make_source(web_nodes=1)
    name = f"{source.name}-copy"

    job = await submit_clone(svc, Request(OWNER, channel="CTEAM"), source=source.name, name=name)

    queued = await _job(svc, job.id)
    assert (queued.state, queued.kind, queued.environment) == ("queued", "clone", name)
    assert (queued.source, queued.requester, queued.channel) == (source.name, OWNER, "CTEAM")
    reserved = await _record(svc, name)
    assert reserved is not None
    assert (reserved.state, reserved.owner) == ("creating", OWNER)
    assert reserved.cloned_from == source.name
    async with svc.sessions() as session:
        (audit,) = await repo.list_audit(session, environment=name)
    assert (audit.actor, audit.action, audit.allowed) == (OWNER, "clone", True)
    assert (audit.channel, audit.detail["job"]) == ("CTEAM", job.id)
    assert await _docker_objects(svc.docker, name) == [], "nothing is made before the job runs"

    done = await run_job(svc, job.id)

    assert done.state == "succeeded" and done.error is None
    assert done.freeze_ms is not None and 0 <= done.freeze_ms < 10_000
    assert done.finished_at is not None and done.started_at is not None
    assert done.started_at <= done.finished_at <= utcnow()
    assert done.steps, "the job keeps the steps it went through"
    assert {s["state"] for s in done.steps} == {"done"}
    assert any(s["node"] == f"{name}-db-1" for s in done.steps)
    assert done.result is not None and done.result["environment"] == name
    ready = await _record(svc, name)
    assert ready is not None and (ready.state, ready.owner) == ("ready", OWNER)
    env = await get_environment(svc.docker, name)
    assert sorted(n.name for n in env.nodes) == [f"{name}-db-1", f"{name}-web-1"]
    assert {n.state for n in env.nodes} == {"running"}
    async with svc.sessions() as session:
        actions = [e.action for e in await repo.list_audit(session, environment=name)]
    assert actions == ["clone succeeded", "clone"]


# -- (b) a refusal leaves nothing behind but its audit entry ----------------------------------
async def test_a_stranger_is_refused_before_anything_is_made(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    name = f"{source.name}-mine"
    reason = f"{source.name} belongs to <@{OWNER}>; ask them to share it with you"

    with pytest.raises(Forbidden, match=re.escape(reason)):
        await submit_clone(svc, Request(STRANGER, channel="CTEAM"), source=source.name, name=name)

    async with svc.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 0
        audit = await repo.list_audit(session)
    assert await _record(svc, name) is None
    assert await _docker_objects(svc.docker, name) == []
    refusals = [e for e in audit if not e.allowed]
    assert [(e.actor, e.action, e.environment, e.reason) for e in refusals] == [
        (STRANGER, "clone", source.name, reason)
    ]
    assert len(audit) == 1, "a refusal writes its refusal and nothing else"


async def test_a_bound_source_refuses_commands_from_other_channels(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    await bind_channel(svc, Request(OWNER), name=source.name, channel="CTEAM")

    with pytest.raises(Forbidden, match=f"{source.name} takes commands only in <#CTEAM>"):
        await submit_clone(svc, Request(OWNER, channel="CRANDOM"), source=source.name, name=None)

    job = await submit_clone(svc, Request(OWNER, channel="CTEAM"), source=source.name, name=None)
    assert job.environment == f"{source.name}-clone1"


# -- (c) a retried delivery is one job ----------------------------------------------------------
async def test_the_same_delivery_twice_is_one_job(svc: Services, make_source: MakeSource) -> None:
    source = await make_source(web_nodes=1)
    name = f"{source.name}-once"
    request = Request(OWNER, channel="CTEAM", key=f"delivery-{secrets.token_hex(4)}")

    first = await submit_clone(svc, request, source=source.name, name=name)
    again = await submit_clone(svc, request, source=source.name, name=name)

    assert again.id == first.id
    assert [j.id for j in await _jobs_for(svc, name)] == [first.id]


async def test_a_retried_delivery_racing_the_first_is_one_job(
    db_settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    name = f"{source.name}-once"
    request = Request(OWNER, key=f"delivery-{secrets.token_hex(4)}")
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(open_services(db_settings))
        two = await stack.enter_async_context(open_services(db_settings))

        outcomes = await asyncio.gather(
            submit_clone(one, request, source=source.name, name=name),
            submit_clone(two, request, source=source.name, name=name),
            return_exceptions=True,
        )

        ids = {o.id if isinstance(o, Job) else repr(o) for o in outcomes}
        assert len(ids) == 1, f"both deliveries should give one job: {outcomes}"
        assert [j.id for j in await _jobs_for(one, name)] == list(ids)


# -- (d) two requests for one new name --------------------------------------------------------
async def test_two_clones_racing_for_one_name_make_one_job(
    db_settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    name = f"{source.name}-race"
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(open_services(db_settings))
        two = await stack.enter_async_context(open_services(db_settings))

        outcomes = await asyncio.gather(
            submit_clone(one, Request(OWNER), source=source.name, name=name),
            submit_clone(two, Request(ADMIN), source=source.name, name=name),
            return_exceptions=True,
        )

        jobs = [o for o in outcomes if isinstance(o, Job)]
        refused = [o for o in outcomes if not isinstance(o, Job)]
        assert len(jobs) == 1, outcomes
        assert len(refused) == 1 and isinstance(refused[0], NameTaken), outcomes
        assert refused[0].message == f"an environment named {name!r} already exists"
        assert [j.id for j in await _jobs_for(one, name)] == [jobs[0].id]
        record = await _record(one, name)
        assert record is not None and record.owner == jobs[0].requester


async def test_a_name_that_exists_in_docker_is_taken(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    other = await make_source(web_nodes=1, db_nodes=0)

    with pytest.raises(NameTaken, match=f"'{other.name}' already exists"):
        await submit_clone(svc, Request(OWNER), source=source.name, name=other.name)
    assert await _jobs_for(svc, other.name) == []


# -- (e) a job is claimed once -----------------------------------------------------------------
async def test_two_workers_claiming_one_job_get_it_once(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    job = await submit_clone(svc, Request(OWNER), source=source.name, name=f"{source.name}-c")
    engines = [create_engine(svc.settings.database_url) for _ in range(2)]
    try:

        async def claim(engine_index: int, worker: str) -> bool:
            async with sessionmaker(engines[engine_index])() as session, session.begin():
                return await repo.claim_job(
                    session, job_id=job.id, worker=worker, lease_until=utcnow()
                )

        claims = await asyncio.gather(claim(0, "worker-a"), claim(1, "worker-b"))
    finally:
        for engine in engines:
            await engine.dispose()

    assert sorted(claims) == [False, True]
    winner = "worker-a" if claims[0] else "worker-b"
    claimed = await _job(svc, job.id)
    assert (claimed.state, claimed.claimed_by) == ("running", winner)
    # this process did not claim it: running the job leaves it to its worker
    assert (await run_job(svc, job.id)).claimed_by == winner
    assert await _docker_objects(svc.docker, job.environment) == []


# -- (f) a clone is its requester's alone --------------------------------------------------------
async def test_a_clone_belongs_to_its_requester_without_the_sources_collaborators(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    await share_environment(svc, Request(OWNER), name=source.name, user="UOPER1", role="operator")
    shared = await _record(svc, source.name)
    assert shared is not None and [c.user for c in shared.collaborators] == ["UOPER1"]
    name = f"{source.name}-adm"

    job = await submit_clone(svc, Request(ADMIN), source=source.name, name=name)
    await run_job(svc, job.id)

    clone = await _record(svc, name)
    assert clone is not None
    assert (clone.owner, clone.state, clone.cloned_from) == (ADMIN, "ready", source.name)
    assert clone.collaborators == []
    assert clone.channels == []
    # Docker says the same, for a record rebuilt from the labels
    nodes = (await get_environment(svc.docker, name)).nodes
    assert {n.labels["clonebot.owner"] for n in nodes} == {ADMIN}
    with pytest.raises(Forbidden, match=f"{name} belongs to <@{ADMIN}>"):
        await submit_clone(svc, Request("UOPER1"), source=name, name=None)
    with pytest.raises(Forbidden, match=f"{name} belongs to <@{ADMIN}>"):
        await submit_clone(svc, Request(OWNER), source=name, name=None)


# -- (g) an environment without an owner --------------------------------------------------------
async def _unowned_environment(docker: DockerClient, *, name: str) -> None:
    """One container with the Compose labels only: no clonebot.owner label."""
    cid = await docker.create_container(
        name=f"{name}_app_1",
        config={
            "Image": IMAGE,
            "Cmd": ["sleep", "1000"],
            "Labels": compose_labels(name, "app", 1),
            "HostConfig": {"NetworkMode": "none"},
        },
    )
    await docker.start_container(cid)


async def test_an_unowned_environment_must_be_adopted_by_an_admin(
    svc: Services, docker: DockerClient
) -> None:
    name, new_owner = f"u{secrets.token_hex(3)}", "UNEWOWNER"
    clone = f"{name}-copy"
    try:
        await _unowned_environment(docker, name=name)

        for user in (OWNER, STRANGER):
            with pytest.raises(Forbidden, match=f"nobody owns {name} yet: an admin must adopt it"):
                await submit_clone(svc, Request(user), source=name, name=clone)
        with pytest.raises(Forbidden, match="only an admin may adopt"):
            await adopt_environment(svc, Request(STRANGER), name=name, owner=STRANGER)
        record = await _record(svc, name)
        assert record is not None and record.owner is None

        await adopt_environment(svc, Request(ADMIN), name=name, owner=new_owner)

        adopted = await _record(svc, name)
        assert adopted is not None and adopted.owner == new_owner
        with pytest.raises(BadRequest, match=f"already owned by {new_owner}"):
            await adopt_environment(svc, Request(ADMIN), name=name, owner=STRANGER)
        job = await submit_clone(svc, Request(new_owner), source=name, name=clone)
        done = await run_job(svc, job.id)
        assert done.state == "succeeded"
        made = await _record(svc, clone)
        assert made is not None and made.owner == new_owner
        async with svc.sessions() as session:
            audit = await repo.list_audit(session, environment=name)
        assert [(e.actor, e.action, e.allowed) for e in audit if e.action == "adopt"] == [
            (ADMIN, "adopt", True),
            (STRANGER, "adopt", False),
        ]
    finally:
        await remove_projects(docker, {name, clone})


# -- (h) a failing job ------------------------------------------------------------------------
async def test_a_failing_clone_frees_the_name_and_records_why(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    name = f"{source.name}-big"
    no_room = dataclasses.replace(
        svc, settings=svc.settings.model_copy(update={"disk_reserve_bytes": 1 << 60})
    )
    job = await submit_clone(no_room, Request(OWNER), source=source.name, name=name)

    with pytest.raises(NotEnoughDisk, match="not enough free disk on the Docker host"):
        await run_job(no_room, job.id)

    failed = await _job(svc, job.id)
    assert failed.state == "failed"
    assert failed.error is not None and "not enough free disk" in failed.error
    assert failed.finished_at is not None and failed.lease_until is None
    assert await _record(svc, name) is None, "the name is free again"
    assert await _docker_objects(svc.docker, name) == []
    async with svc.sessions() as session:
        (outcome, _submitted) = await repo.list_audit(session, environment=name)
    assert outcome.action == "clone failed" and "not enough free disk" in outcome.reason

    retry = await submit_clone(svc, Request(OWNER), source=source.name, name=name)
    assert (await run_job(svc, retry.id)).state == "succeeded"

"""Crash recovery for real: clonebot is killed with SIGKILL mid-clone, then recovered."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time

import pytest

from services.access import Request
from services.context import open_services
from services.docker import DockerClient
from services.environments import JOB, PROJECT, get_environment
from services.jobs import run_job, submit_clone
from services.recovery import recover_jobs
from services.settings import Settings
from storage import repositories as repo
from storage.models import Job, JobState, utcnow
from tests.conftest import IMAGE, OWNER, MakeSource, exec_output


async def _clone_until(
    point: str, *, settings: Settings, source: str, name: str
) -> asyncio.subprocess.Process:
    """Start `clonebot clone` in a process of its own; return it once it hangs at ``point``."""
    return await _run_until(point, settings=settings, args=["clone", source, name, "--as", OWNER])


async def _run_until(
    point: str, *, settings: Settings, args: list[str]
) -> asyncio.subprocess.Process:
    """Start clonebot with ``args`` in a process of its own; return it once it hangs at a point."""
    env = {
        **os.environ,
        "DOCKER_HOST": settings.docker_host,
        "DATABASE_URL": settings.database_url,
        "CLONEBOT_FAILPOINT": point,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    async with asyncio.timeout(120):
        while line := (await proc.stdout.readline()).decode():
            seen.append(line)
            if f"failpoint {point} reached" in line:
                return proc
    raise AssertionError(f"clonebot ended before reaching {point}: {''.join(seen)[-2000:]}")


async def _state(docker: DockerClient, name: str) -> set[str]:
    return {n.state for n in (await get_environment(docker, name)).nodes}


@pytest.mark.parametrize("point", ["pre-copy", "freeze", "start"])
async def test_a_killed_clone_is_recovered(
    docker: DockerClient, db_settings: Settings, make_source: MakeSource, point: str
) -> None:
    source = await make_source(web_nodes=1)
    name = f"{source.name}-crash"
    proc = await _clone_until(point, settings=db_settings, source=source.name, name=name)
    if point == "freeze":
        assert "paused" in await _state(docker, source.name)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()

    started = time.monotonic()
    async with open_services(db_settings) as svc:
        [job] = await recover_jobs(svc)
        resumed_within = time.monotonic() - started
        async with svc.sessions() as session:
            stored = await repo.get_job(session, job.id)
            record = await repo.get_environment(session, name)

    assert await _state(docker, source.name) == {"running"}
    assert resumed_within < 10
    for lister in (docker.list_containers, docker.list_networks, docker.list_volumes):
        assert await lister(labels=[f"{JOB}={job.id}"]) == []
        assert await lister(labels=[f"{PROJECT}={name}"]) == []
    assert await docker.list_images(labels=[f"{JOB}={job.id}"]) == []
    assert stored is not None and stored.state == "rolled back"
    assert stored.error is not None and "clonebot stopped during" in stored.error
    assert record is None, "the name is free again"
    async with open_services(db_settings) as svc:
        assert await recover_jobs(svc) == [], "a recovered job is not recovered twice"


async def test_serve_recovers_at_start(
    docker: DockerClient, db_settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    proc = await _clone_until(
        "freeze", settings=db_settings, source=source.name, name=f"{source.name}-crash"
    )
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert "paused" in await _state(docker, source.name)

    env = {**os.environ, "DOCKER_HOST": db_settings.docker_host}
    env["DATABASE_URL"] = db_settings.database_url
    serving = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve", "--no-router",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    assert serving.stdout is not None
    try:
        started = time.monotonic()
        async with asyncio.timeout(10):
            # polling the engine: nothing to wait on but its answer
            while await _state(docker, source.name) != {"running"}:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert time.monotonic() - started < 10
        async with asyncio.timeout(10):
            line = ""
            while "recovered job" not in line:
                line = (await serving.stdout.readline()).decode()
                assert line, "serve ended early"
        assert "clonebot stopped during" in line
    finally:
        serving.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(serving.wait(), timeout=10) == 0


async def test_a_killed_refresh_gives_the_clone_back(
    docker: DockerClient, db_settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    async with open_services(db_settings) as svc:
        job = await submit_clone(svc, Request(OWNER), source=source.name, name=None)
        clone = (await run_job(svc, job.id)).environment
    before = {n.name for n in (await get_environment(docker, clone)).nodes}

    proc = await _run_until("freeze", settings=db_settings, args=["refresh", clone, "--as", OWNER])
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert "paused" in await _state(docker, source.name)

    async with open_services(db_settings) as svc:
        [recovered] = await recover_jobs(svc)
    assert recovered.kind == "refresh"
    assert await _state(docker, source.name) == {"running"}
    after = await get_environment(docker, clone)
    assert {n.name for n in after.nodes} == before, "the clone's nodes are back, under their names"
    assert {n.state for n in after.nodes} == {"running"}
    assert await docker.list_containers(labels=[f"{JOB}={recovered.id}"]) == []


@pytest.mark.parametrize("point", ["rename", "rename-cleanup"])
async def test_a_killed_rename_ends_with_one_whole_environment(
    docker: DockerClient, db_settings: Settings, make_source: MakeSource, point: str
) -> None:
    """Killed before the new nodes run: the old ones come back; after: the rename completes."""
    source = await make_source(web_nodes=1)
    old, new = source.name, f"{source.name}-renamed"
    before = {n.id for n in (await get_environment(docker, old)).nodes}
    proc = await _run_until(point, settings=db_settings, args=["rename", old, new, "--as", OWNER])
    proc.send_signal(signal.SIGKILL)
    await proc.wait()

    async with open_services(db_settings) as svc:
        [job] = await recover_jobs(svc)
        async with svc.sessions() as session:
            records = {n: await repo.get_environment(session, n) for n in (old, new)}

    kept, gone = (old, new) if point == "rename" else (new, old)
    env = await get_environment(docker, kept)
    assert {n.state for n in env.nodes} == {"running"}
    assert await exec_output(docker, env.layer("db").master.id, "cat /anon/file") == "anon"
    for lister in (docker.list_containers, docker.list_networks):
        assert await lister(labels=[f"{PROJECT}={gone}"]) == []
    assert records[gone] is None
    assert records[kept] is not None and records[kept].state == "ready"
    if point == "rename":
        assert {n.id for n in env.nodes} == before, "the very same containers"
        assert job.state == "rolled back"
    else:
        assert job.state == "succeeded"


async def test_recovery_removes_what_a_failed_clone_left_on_an_engine_that_was_away(
    docker: DockerClient, settings: Settings
) -> None:
    """A clone whose rollback met its engine away for longer than its sweep waits ends with
    its remains still labelled with it; recovery removes them once the engine answers, and
    never what a clone that succeeded made."""
    failed, succeeded = secrets.token_hex(6), secrets.token_hex(6)
    made = {}
    for job in (failed, succeeded):
        made[job] = await docker.create_network({"Name": f"cbremain-{job}", "Labels": {JOB: job}})
    try:
        async with open_services(settings) as svc:
            async with svc.sessions() as session:
                for job, state in ((failed, JobState.ROLLED_BACK), (succeeded, JobState.SUCCEEDED)):
                    session.add(
                        Job(
                            id=job, kind="clone", state=state, environment=f"remain-{job}",
                            source="prod", requester=OWNER, params={}, steps=[], frozen=[],
                            engine="local", source_engine="local",
                        )
                    )  # fmt: skip
                await session.commit()
            await recover_jobs(svc)
        assert await docker.inspect_network(made[failed]) is None
        assert await docker.inspect_network(made[succeeded]) is not None
    finally:
        for network in made.values():
            if await docker.inspect_network(network) is not None:
                await docker.remove_network(network)


async def test_recovery_resumes_a_task_on_the_engine_its_record_names(
    docker: DockerClient, settings: Settings
) -> None:
    """A Swarm task is paused on its node's engine, not the job's source's (the manager's):
    the job's record names that engine, and recovery resumes the task there."""
    job = secrets.token_hex(6)
    config = {"Image": IMAGE, "Cmd": ["sleep", "600"], "Labels": {"clonebot.test": job}}
    cid = await docker.create_container(name=f"cbtask-{job}", config=config)
    try:
        await docker.start_container(cid)
        await docker.pause_container(cid)
        async with open_services(settings) as svc:
            async with svc.sessions() as session:
                session.add(
                    Job(
                        id=job, kind="clone", state=JobState.FAILED, environment=f"t-{job}",
                        source="prod", requester=OWNER, params={"stack": True}, steps=[],
                        frozen=[{"container": cid, "how": "paused", "engine": "local"}],
                        engine="manager-away", source_engine="manager-away", finished_at=utcnow(),
                    )
                )  # fmt: skip
                await session.commit()
            await recover_jobs(svc)
        assert (await docker.inspect_container(cid))["State"]["Status"] == "running"
    finally:
        await docker.remove_container(cid)

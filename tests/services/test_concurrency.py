"""Jobs on one environment at once: clones share a source, a change excludes every other job,
a pause that fails never stops production, and the job system's own failures."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import signal
import sys
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from services import job_run, planning
from services.access import Request
from services.context import Services, open_services
from services.docker import DockerClient
from services.environments import PROJECT, get_environment
from services.errors import BadRequest, ClonebotError, LeaseLost, NotEnoughDisk
from services.jobs import run_job, submit_clone
from services.recovery import recover_jobs
from services.settings import Settings
from services.volumes import VolumeSizes
from storage import repositories as repo
from storage.models import Job
from tests.conftest import OWNER, MakeSource, exec_output, read_volume


async def _started(docker: DockerClient, name: str) -> dict[str, tuple[str, bool, bool]]:
    """Each container's start time, and whether it runs and is paused."""
    found = {}
    for node in (await get_environment(docker, name)).nodes:
        state = node.attrs["State"]
        found[node.name] = (state["StartedAt"], state["Running"], state["Paused"])
    return found


async def _objects(docker: DockerClient, name: str) -> list[str]:
    label = [f"{PROJECT}={name}"]
    found = [c["Names"][0] for c in await docker.list_containers(labels=label)]
    found += [v["Name"] for v in await docker.list_volumes(labels=label)]
    return found


async def _job(svc: Services, job_id: str) -> Job:
    async with svc.sessions() as session:
        job = await repo.get_job(session, job_id)
    assert job is not None
    return job


# -- five clones of one source at once ----------------------------------------------------------
@pytest.mark.slow
async def test_five_clones_of_one_source_at_once_never_restart_it(
    docker: DockerClient, db_settings: Settings, make_source: MakeSource
) -> None:
    """Five people clone production at nine in the morning, each from a process of their own."""
    source = await make_source(web_nodes=1, seed_kib=1024)
    await asyncio.sleep(0.5)  # the writer is going
    before = await _started(docker, source.name)
    names = [f"{source.name}-c{i}" for i in range(5)]
    async with AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(open_services(db_settings)) for _ in names]

        async def clone(svc: Services, name: str) -> Job:
            job = await submit_clone(
                svc, Request(OWNER), source=source.name, name=name, snapshot=True
            )
            return await run_job(svc, job.id)

        async with asyncio.timeout(240):
            done = await asyncio.gather(*(clone(s, n) for s, n in zip(opened, names, strict=True)))

    assert [(j.state, j.error) for j in done] == [("succeeded", None)] * 5
    after = await _started(docker, source.name)
    assert after == before, "no source container was restarted, paused or stopped at the end"
    assert all(running and not paused for _, running, paused in after.values())
    written = (await read_volume(docker, source.volume, "log")).splitlines()
    for name in names:
        cloned = (await read_volume(docker, f"{name}_data", "log")).splitlines()
        assert len(cloned) > 10
        # one instant of the source: whole lines, in order, as the source wrote them
        assert written[: len(cloned)] == cloned, f"{name} is not a snapshot of the source"


# -- a change excludes every other job, across processes ---------------------------------------
async def _clonebot(
    settings: Settings, *args: str, failpoint: str | None = None
) -> asyncio.subprocess.Process:
    env = {**os.environ, "DOCKER_HOST": settings.docker_host, "DATABASE_URL": settings.database_url}
    env.pop("CLONEBOT_FAILPOINT", None)
    if failpoint:
        env["CLONEBOT_FAILPOINT"] = failpoint
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip


async def _until(proc: asyncio.subprocess.Process, line: str) -> None:
    assert proc.stdout is not None
    seen = []
    async with asyncio.timeout(120):
        while out := (await proc.stdout.readline()).decode():
            seen.append(out)
            if line in out:
                return
    raise AssertionError(f"clonebot ended before {line!r}: {''.join(seen)[-2000:]}")


async def _output(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    async with asyncio.timeout(180):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.slow
async def test_a_rename_is_refused_while_another_process_clones_the_source(
    docker: DockerClient, db_settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    clone, renamed = f"{source.name}-c", f"{source.name}-r"
    cloning = await _clonebot(
        db_settings, "clone", source.name, clone, "--as", OWNER, failpoint="pre-copy"
    )
    try:
        await _until(cloning, "failpoint pre-copy reached")
        async with open_services(db_settings) as svc:
            [job] = [j for j in await _jobs(svc) if j.environment == clone]

        code, out = await _output(
            await _clonebot(db_settings, "rename", source.name, renamed, "--as", OWNER)
        )
        assert code != 0
        assert f"{source.name} is busy: clone, job {job.id[:4]}…, " in " ".join(out.split())
        assert await _objects(docker, renamed) == []
        # audited as every refusal is: who, what, and why
        code, out = await _output(
            await _clonebot(db_settings, "audit", "--env", source.name, "--json")
        )
        assert code == 0, out
        refused = [e for e in json.loads(out) if not e["allowed"]]
        assert [(e["actor"], e["action"]) for e in refused] == [(OWNER, "rename")]
        assert refused[0]["reason"].startswith(f"{source.name} is busy: clone, job {job.id[:4]}…")

        # the holder dies: its lock stays until recovery has put the source back
        cloning.send_signal(signal.SIGKILL)
        await cloning.wait()
        code, out = await _output(
            await _clonebot(db_settings, "rename", source.name, renamed, "--as", OWNER)
        )
        assert code != 0 and "its process is gone: `clonebot recover` frees it" in " ".join(
            out.split()
        )
        async with open_services(db_settings) as svc:
            assert [j.id for j in await recover_jobs(svc)] == [job.id]
        code, out = await _output(
            await _clonebot(db_settings, "rename", source.name, renamed, "--as", OWNER)
        )
        assert code == 0, out
        assert {n.state for n in (await get_environment(docker, renamed)).nodes} == {"running"}
    finally:
        if cloning.returncode is None:
            cloning.send_signal(signal.SIGKILL)
            await cloning.wait()


async def _jobs(svc: Services) -> list[Job]:
    async with svc.sessions() as session:
        return list(await repo.list_jobs(session))


# -- a pause that fails fails the job; production is never stopped for it ----------------------
class _ExitsBeforeThePause(DockerClient):
    """The engine as it is when the source's process exits between the plan and the freeze."""

    async def pause_container(self, ref: str) -> None:
        await self.stop_container(ref, timeout_s=1)
        await super().pause_container(ref)


async def test_a_pause_that_fails_fails_the_job_and_never_restarts_the_source(
    svc: Services, docker: DockerClient, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    name = f"{source.name}-c"
    async with _ExitsBeforeThePause(svc.settings.docker_host) as exiting:
        failing = dataclasses.replace(svc, docker=exiting)
        job = await submit_clone(failing, Request(OWNER), source=source.name, name=name)
        before = await _started(docker, source.name)
        with pytest.raises(ClonebotError, match="could not be paused"):
            await run_job(failing, job.id)

    ended = await _job(svc, job.id)
    assert ended.state in ("failed", "rolled back")
    assert ended.error is not None and f"{source.name}_db_1 could not be paused" in ended.error
    after = await _started(docker, source.name)
    db = f"{source.name}_db_1"
    assert after[db][0] == before[db][0] and not after[db][1], "clonebot did not start it again"
    assert after[f"{source.name}_web_1"] == before[f"{source.name}_web_1"]
    assert await _objects(docker, name) == []


async def test_a_source_labelled_freeze_stop_is_stopped_not_paused(
    svc: Services, docker: DockerClient, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=0, db_labels={"clonebot.freeze": "stop"})
    db = f"{source.name}_db_1"
    before = await _started(docker, source.name)
    job = await submit_clone(svc, Request(OWNER), source=source.name, name=f"{source.name}-c")

    assert (await run_job(svc, job.id)).state == "succeeded"

    started_at, running, paused = (await _started(docker, source.name))[db]
    assert started_at != before[db][0], "asked for by its label: stopped and started again"
    assert running and not paused


# -- the job system ------------------------------------------------------------------------------
async def test_a_job_of_an_unknown_kind_fails_and_deletes_nothing(
    svc: Services, docker: DockerClient, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    before = await _started(docker, source.name)
    job = Job(
        id=secrets.token_hex(6), kind="resize", state="queued", environment=source.name,
        source=None, requester=OWNER, params={}, steps=[], frozen=[],
    )  # fmt: skip
    async with svc.sessions() as session, session.begin():
        session.add(job)

    with pytest.raises(BadRequest, match="'resize'"):
        await run_job(svc, job.id)

    assert (await _job(svc, job.id)).state == "failed"
    assert await _started(docker, source.name) == before, "the environment is untouched"


def _trigger(dialect: str, *, name: str, when: str) -> list[str]:
    """A trigger that fails an UPDATE of the jobs table ``when`` (an SQL condition)."""
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER {name} BEFORE UPDATE ON jobs WHEN {when} "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        ]
    return [
        f"CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION 'disk I/O error'; END $$ LANGUAGE plpgsql",
        f"CREATE TRIGGER {name} BEFORE UPDATE ON jobs FOR EACH ROW WHEN ({when}) "
        f"EXECUTE FUNCTION {name}()",
    ]


async def _install(svc: Services, statements: list[str]) -> None:
    async with svc.sessions() as session, session.begin():
        for statement in statements:
            await session.execute(text(statement))


async def _dialect(svc: Services) -> str:
    async with svc.sessions() as session:
        return (await session.connection()).dialect.name


async def test_a_job_whose_lease_cannot_be_renewed_stops_before_it_lapses(
    svc: Services,
    docker: DockerClient,
    make_source: MakeSource,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = await make_source(web_nodes=1)
    name = f"{source.name}-c"
    # a rollback on a loaded 2-core machine may take seconds: two thirds of 21 s leave 14
    monkeypatch.setattr(job_run, "LEASE", timedelta(seconds=21))
    monkeypatch.setattr(job_run, "HEARTBEAT_S", 0.5)
    # every renewal of a running job's lease fails, as with the database unreachable
    when = "OLD.state = 'running' AND NEW.state = 'running' AND NEW.lease_until IS NOT NULL"
    when += " AND NEW.lease_until <> OLD.lease_until"
    await _install(svc, _trigger(await _dialect(svc), name="no_renewal", when=when))
    monkeypatch.setenv("CLONEBOT_FAILPOINT", "pre-copy")  # the job would hang there for ever
    job = await submit_clone(svc, Request(OWNER), source=source.name, name=name)

    with pytest.raises(LeaseLost, match="its lease could not be renewed"):
        async with asyncio.timeout(60):
            await run_job(svc, job.id)

    ended = await _job(svc, job.id)
    assert ended.state == "rolled back"
    assert ended.started_at is not None and ended.finished_at is not None
    assert ended.finished_at < ended.started_at + job_run.LEASE, "stopped before it lapsed"
    assert await _objects(docker, name) == []
    assert {s[1] for s in (await _started(docker, source.name)).values()} == {True}


async def test_a_failing_progress_write_does_not_undo_a_clone_that_succeeded(
    svc: Services, docker: DockerClient, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    name = f"{source.name}-c"
    steps = "NEW.steps" if await _dialect(svc) == "sqlite" else "CAST(NEW.steps AS TEXT)"
    # the progress record of the clone's last step cannot be written
    when = f"NEW.state = 'running' AND {steps} LIKE '%\"start\"%'"
    await _install(svc, _trigger(await _dialect(svc), name="no_progress", when=when))
    job = await submit_clone(svc, Request(OWNER), source=source.name, name=name)

    done = await run_job(svc, job.id)

    assert (done.state, done.error) == ("succeeded", None)
    assert {n.state for n in (await get_environment(docker, name)).nodes} == {"running"}
    async with svc.sessions() as session:
        record = await repo.get_environment(session, name)
    assert record is not None and record.state == "ready"


async def test_two_large_clones_at_once_do_not_both_pass_the_disk_check(
    svc: Services, docker: DockerClient, make_source: MakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = await make_source(web_nodes=0, seed_kib=64 * 1024)
    seed = "ls -l /data/seed | awk '{print $5}'"
    async with asyncio.timeout(60):  # the source has written its seed
        while await exec_output(docker, f"{source.name}_db_1", seed) != str(64 << 20):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    first = await submit_clone(svc, Request(OWNER), source=source.name, name=f"{source.name}-a")
    monkeypatch.setenv("CLONEBOT_FAILPOINT", "pre-copy")  # the first holds before it copies
    running = asyncio.create_task(run_job(svc, first.id))
    try:
        async with asyncio.timeout(60):
            while (await _job(svc, first.id)).reserved_bytes == 0:
                assert not running.done(), running
                await asyncio.sleep(0.2)
        reserved = (await _job(svc, first.id)).reserved_bytes
        assert reserved >= 64 << 20
        # room for one copy and a half beside the reserve: one clone fits, two do not. The
        # free space is pinned: tests on other workers fill and free the same disk meanwhile
        reserve = 1 << 20
        real = planning.measure_volumes

        async def measured(*args: Any, **kwargs: Any) -> VolumeSizes:
            sizes = await real(*args, **kwargs)
            return dataclasses.replace(sizes, free=reserve + reserved * 3 // 2)

        monkeypatch.setattr(planning, "measure_volumes", measured)
        tight = dataclasses.replace(
            svc, settings=svc.settings.model_copy(update={"disk_reserve_bytes": reserve})
        )
        second = await submit_clone(
            tight, Request(OWNER), source=source.name, name=f"{source.name}-b"
        )
        with pytest.raises(NotEnoughDisk, match="running jobs will still write"):
            # its plan measures the 64 MiB volume: over a minute once, beside three workers
            async with asyncio.timeout(120):
                await run_job(tight, second.id)
        assert (await _job(svc, second.id)).state == "failed"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert (await _job(svc, first.id)).reserved_bytes == 0, "an ended job reserves nothing"


async def test_jobs_past_max_jobs_wait_saying_what_for(
    svc: Services, docker: DockerClient, make_source: MakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = await make_source(web_nodes=1)
    one = dataclasses.replace(svc, settings=svc.settings.model_copy(update={"max_jobs": 1}))
    first = await submit_clone(one, Request(OWNER), source=source.name, name=f"{source.name}-a")
    monkeypatch.setenv("CLONEBOT_FAILPOINT", "pre-copy")
    running = asyncio.create_task(run_job(one, first.id))
    waiting: asyncio.Task[Job] | None = None
    try:
        async with asyncio.timeout(60):
            while (await _job(svc, first.id)).state != "running":  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        monkeypatch.delenv("CLONEBOT_FAILPOINT")
        second = await submit_clone(
            one, Request(OWNER), source=source.name, name=f"{source.name}-b"
        )
        seen: list[str] = []
        waiting = asyncio.create_task(
            run_job(one, second.id, emit=lambda e: seen.append(getattr(e, "detail", "")))
        )
        async with asyncio.timeout(60):
            while (await _job(svc, second.id)).step is None:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        queued = await _job(svc, second.id)
        assert queued.state == "queued"
        assert queued.step == "waits for a slot (CLONEBOT_MAX_JOBS=1)"
        assert any(f"1 jobs run (CLONEBOT_MAX_JOBS=1): clone {source.name}-a" in d for d in seen)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert waiting is not None
    async with asyncio.timeout(120):
        assert (await waiting).state == "succeeded", "it runs once the slot is free"

"""Turns on a source's freeze: a clone planned while another job has its source frozen
still freezes it itself; a source a job could not resume is resumed by recovery."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from services.access import Request
from services.context import Services
from services.docker import DockerClient
from services.errors import ClonebotError, DockerUnavailable
from services.jobs import run_job, submit_clone
from services.recovery import recover_jobs
from storage import repositories as repo
from tests.conftest import OWNER, MakeSource


class _HeldPause(DockerClient):
    """The real engine; the first pause holds the job frozen until the test lets it go."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.paused, self.release = asyncio.Event(), asyncio.Event()

    async def pause_container(self, ref: str) -> None:
        await super().pause_container(ref)
        self.paused.set()
        await self.release.wait()


@pytest.mark.slow
async def test_a_clone_planned_during_another_jobs_freeze_freezes_the_source_itself(
    svc: Services, docker: DockerClient, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=0)
    first = await submit_clone(svc, Request(OWNER), source=source.name, name=f"{source.name}-a")
    second = await submit_clone(svc, Request(OWNER), source=source.name, name=f"{source.name}-b")
    async with _HeldPause(svc.settings.docker_host) as held:
        holding = asyncio.create_task(run_job(dataclasses.replace(svc, docker=held), first.id))
        try:
            await asyncio.wait_for(held.paused.wait(), timeout=120)
            db = (await docker.inspect_container(f"{source.name}_db_1"))["State"]
            assert db["Paused"], "the first job holds the source frozen"
            # planned now, the second job sees the source paused: by the first job, whose
            # freeze ends before the second one's final pass
            waiting = asyncio.create_task(run_job(svc, second.id))
            await asyncio.sleep(3)
            assert not waiting.done(), "it waits for the first job's freeze to end"
        finally:
            held.release.set()
        assert (await asyncio.wait_for(holding, timeout=120)).state == "succeeded"
    done = await asyncio.wait_for(waiting, timeout=120)
    assert done.state == "succeeded"
    # it froze the source for its own final pass: before, it took the paused source for one
    # its owner holds still, copied it running and reported no freeze at all
    assert done.freeze_ms is not None and done.freeze_ms > 0
    db = (await docker.inspect_container(f"{source.name}_db_1"))["State"]
    assert db["Running"] and not db["Paused"]


class _CannotUnpause(DockerClient):
    """The real engine, which fails every unpause (as an engine that stops answering would)."""

    async def unpause_container(self, ref: str) -> None:
        raise DockerUnavailable("the Docker engine does not answer (injected)")


@pytest.mark.slow
async def test_a_source_a_job_could_not_resume_is_resumed_by_recovery(
    svc: Services, docker: DockerClient, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=0)
    db = f"{source.name}_db_1"
    job = await submit_clone(svc, Request(OWNER), source=source.name, name=f"{source.name}-c")
    try:
        async with _CannotUnpause(svc.settings.docker_host) as failing:
            with pytest.raises(ClonebotError):
                await run_job(dataclasses.replace(svc, docker=failing), job.id)
        assert (await docker.inspect_container(db))["State"]["Paused"]
        async with svc.sessions() as session:
            ended = await repo.get_job(session, job.id)
        assert ended is not None and ended.finished_at is not None
        assert ended.frozen, "the record of what it froze is kept for recovery"

        await recover_jobs(svc)

        state = (await docker.inspect_container(db))["State"]
        assert state["Running"] and not state["Paused"], "recovery resumed production"
        async with svc.sessions() as session:
            ended = await repo.get_job(session, job.id)
        assert ended is not None and ended.frozen == []
    finally:
        if (await docker.inspect_container(db))["State"]["Paused"]:
            await docker.unpause_container(db)

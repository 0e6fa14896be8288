"""A clone planned while another job has its source frozen still freezes it itself."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from services.access import Request
from services.context import Services
from services.docker import DockerClient
from services.jobs import run_job, submit_clone
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

"""Many clones at once in one clonebot, as a busy Slack workspace asks for them: ten of one
source to ten names all finish (CLONEBOT_MAX_JOBS at a time, the rest waiting their turn),
and one name asked for twice at once gives one clone and one clear refusal.

tests/services/test_concurrency.py runs five clones from five processes (snapshots) and
tests/services/test_jobs.py two submissions racing for one name; these run the jobs to
their end in one process, where the bot runs them."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.access import Request
from services.context import Services
from services.docker import DockerClient
from services.environments import PROJECT, get_environment
from services.errors import NameTaken
from services.jobs import run_job, submit_clone
from storage import repositories as repo
from storage.models import Job
from tests.conftest import ADMIN, OWNER, MakeSource, exec_output

pytestmark = [pytest.mark.docker, pytest.mark.slow]
CLONES = 10


async def _clone(svc: Services, user: str, *, source: str, name: str) -> Job:
    job = await submit_clone(svc, Request(user), source=source, name=name)
    return await run_job(svc, job.id)


def _most_at_once(jobs: list[Job]) -> int:
    """The most jobs that were running at one instant (from their start and end)."""
    edges = sorted(
        [(j.started_at, 1) for j in jobs if j.started_at]
        + [(j.finished_at, -1) for j in jobs if j.finished_at]
    )
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


async def test_ten_clones_of_one_source_at_once_all_finish(
    svc: Services, docker: DockerClient, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    names = [f"{source.name}-n{i}" for i in range(CLONES)]
    began = time.monotonic()
    async with asyncio.timeout(300):
        done = await asyncio.gather(
            *(_clone(svc, OWNER, source=source.name, name=n) for n in names),
            return_exceptions=True,
        )
    took = time.monotonic() - began

    assert [(getattr(j, "state", j), getattr(j, "error", None)) for j in done] == [
        ("succeeded", None)
    ] * CLONES
    jobs = [j for j in done if isinstance(j, Job)]
    most = _most_at_once(jobs)
    assert most <= svc.settings.max_jobs == 4, f"{most} ran at once"
    # each clone is whole and runs: its own database node, and its web node serving its page
    for name in names:
        nodes = {n.name: n.state for n in (await get_environment(docker, name)).nodes}
        assert nodes == {f"{name}-db-1": "running", f"{name}-web-1": "running"}, nodes
        page = await exec_output(docker, f"{name}-web-1", "wget -qO- http://127.0.0.1/")
        assert page == f"{source.name} web 1"
    source_nodes = (await get_environment(docker, source.name)).nodes
    assert all(n.attrs["State"]["Running"] and not n.attrs["State"]["Paused"] for n in source_nodes)
    each = sorted((j.finished_at - j.started_at).total_seconds() for j in jobs)  # type: ignore[operator]
    print(
        f"\n{CLONES} clones in {took:.1f} s, at most {most} at once; one clone took "
        f"{each[0]:.1f}–{each[-1]:.1f} s (median {each[len(each) // 2]:.1f} s)"
    )


async def test_one_name_asked_twice_at_once_gives_one_clone_and_one_refusal(
    svc: Services, docker: DockerClient, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    name = f"{source.name}-same"
    async with asyncio.timeout(120):
        outcomes = await asyncio.gather(
            _clone(svc, OWNER, source=source.name, name=name),
            _clone(svc, ADMIN, source=source.name, name=name),
            return_exceptions=True,
        )

    [won] = [o for o in outcomes if isinstance(o, Job)]
    [refused] = [o for o in outcomes if not isinstance(o, Job)]
    assert won.state == "succeeded", won.error
    assert isinstance(refused, NameTaken), refused
    assert refused.message == f"an environment named {name!r} already exists"
    # nothing of the refused request: one job for the name, every object of the clone its
    async with svc.sessions() as session:
        assert [j.id for j in await repo.list_jobs(session) if j.environment == name] == [won.id]
        record = await repo.get_environment(session, name)
    assert record is not None and record.owner == won.requester and record.state == "ready"
    label = [f"{PROJECT}={name}"]
    containers = await docker.list_containers(labels=label)
    assert sorted(c["Names"][0] for c in containers) == [f"/{name}-db-1", f"/{name}-web-1"]
    made = [*containers, *await docker.list_networks(labels=label)]
    made += await docker.list_volumes(labels=label)
    assert {(m.get("Labels") or {}).get("clonebot.job") for m in made} == {won.id}
    # asked again once it runs: refused the same way, and the clone is untouched
    with pytest.raises(NameTaken, match="already exists"):
        await _clone(svc, OWNER, source=source.name, name=name)
    after = await docker.list_containers(labels=label)
    assert [(c["Id"], c["State"]) for c in after] == [(c["Id"], c["State"]) for c in containers]

"""Recovering jobs whose process died: sources resumed, partial clones removed, jobs closed."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select, update

from services.context import Services, load_added_engines
from services.docker import DockerClient, gather_all
from services.environments import JOB
from services.errors import ClonebotError
from services.fleet import ANSWER_S
from services.freeze import resume_recorded
from services.jobs import close_job
from services.ledger import list_services, remove_job_resources
from services.lifecycle import finish_rename
from services.workers import this_worker, worker_is_gone
from storage import repositories as repo
from storage.models import Job, JobState, utcnow

log = logging.getLogger(__name__)


async def recover_jobs(svc: Services) -> list[Job]:
    """Close every running job whose process is gone; returns them as they now stand."""
    async with svc.sessions() as session:
        running = await repo.jobs_in_state(session, JobState.RUNNING)
    orphans = [
        job
        for job in running
        if worker_is_gone(job.claimed_by, lease_until=job.lease_until, now=utcnow())
    ]
    recovered = []
    await load_added_engines(svc.fleet, svc.sessions)  # one added since serve started
    for job in orphans:
        if not await _take_over(svc, job):
            continue
        try:
            recovered.append(await _recover(svc, job))
        except ClonebotError as exc:  # its engine away, say: the next round tries again
            log.warning("job %s cannot be recovered yet: %s", job.id, exc.message)
            await _give_back(svc, job)
    await _resume_abandoned(svc)
    await sweep_remains(svc)
    return recovered


async def sweep_remains(svc: Services) -> int:
    """Remove what clones that did not succeed still left on an engine: their rollback, and
    the sweep after it, give up on an engine away for over 2 minutes (``ledger.sweep_job``);
    once it answers again, this finds the job's labelled containers, volumes, networks and
    images there. How many were removed; an engine that does not answer (all are asked at
    once) is tried next time."""
    counts = await asyncio.gather(*(_sweep_engine(svc, e) for e in svc.fleet.names))
    return sum(counts)


async def _sweep_engine(svc: Services, engine: str) -> int:
    try:
        docker = svc.on(engine).docker
        async with asyncio.timeout(ANSWER_S):
            found = await gather_all(
                docker.list_containers(labels=[JOB]), docker.list_volumes(labels=[JOB]),
                docker.list_networks(labels=[JOB]), docker.list_images(labels=[JOB]),
                list_services(docker, labels=[JOB]),
            )  # fmt: skip
    except (ClonebotError, TimeoutError):
        return 0
    ids = {(item.get("Labels") or {}).get(JOB, "") for kind in found for item in kind}
    if not ids:
        return 0
    async with svc.sessions() as session:
        ended = await session.scalars(
            select(Job.id).where(
                Job.id.in_(sorted(ids)),
                Job.kind == "clone",
                Job.state.in_([JobState.FAILED, JobState.ROLLED_BACK]),
            )
        )
        failed = list(ended)
    removed = 0
    for job in failed:
        try:
            async with asyncio.timeout(_REMOVING_S):
                count = await remove_job_resources(docker, job)
        except (ClonebotError, TimeoutError) as exc:  # in use, or cut off: next round
            log.warning("job %s: its remains on engine %s stay for now: %s", job, engine, exc)
            continue
        log.warning("job %s: removed %d resource(s) left on engine %s", job, count, engine)
        removed += count
    return removed


_REMOVING_S = 60.0


async def _give_back(svc: Services, job: Job) -> None:
    """A job whose recovery failed is running again, as its dead process left it."""
    async with svc.sessions() as session, session.begin():
        await session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == JobState.RECOVERING)
            .values(state=JobState.RUNNING, claimed_by=job.claimed_by)
        )


async def _resume_abandoned(svc: Services) -> None:
    """Sources an ended job could not resume (the engine failed it then) are resumed now,
    unless a job still running names them: then it holds them, or waits for them."""
    async with svc.sessions() as session:
        ended = await repo.jobs_with_frozen_record(session, finished=True)
        unfinished = await repo.jobs_with_frozen_record(session, finished=False)
    held = {entry["container"] for job in unfinished for entry in job.frozen}
    for job in ended:
        left = [entry for entry in job.frozen if entry["container"] not in held]
        try:
            resumed = await _resumed(svc, job, left)
        except ClonebotError:
            log.exception("job %s: its sources still cannot be resumed", job.id)
            continue
        log.warning("job %s: resumed %d source container(s) it had left frozen", job.id, resumed)
        async with svc.sessions() as session, session.begin():
            kept = [entry for entry in job.frozen if entry["container"] in held]
            await repo.update_job(session, job.id, frozen=kept)


async def _resumed(svc: Services, job: Job, frozen: list[dict[str, str]]) -> int:
    """``resume_recorded`` on the engine of each entry: its own (a Swarm task's node), else
    the job's source's."""
    by_engine: dict[str, list[dict[str, str]]] = {}
    for entry in frozen:
        engine = entry.get("engine") or job.source_engine or job.engine
        by_engine.setdefault(engine, []).append(entry)
    counts = [await resume_recorded(svc.on(e).docker, entries) for e, entries in by_engine.items()]
    return sum(counts)


async def _take_over(svc: Services, job: Job) -> bool:
    """Claim the orphan for this process, so that two recoveries never work on one job."""
    async with svc.sessions() as session, session.begin():
        result = await session.execute(
            update(Job)
            .where(
                Job.id == job.id, Job.state == JobState.RUNNING, Job.claimed_by == job.claimed_by
            )
            .values(state=JobState.RECOVERING, claimed_by=this_worker())
        )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def _recover(svc: Services, job: Job) -> Job:
    """Sources resumed on their engine, what the job made removed from its own."""
    source, svc = svc.on(job.source_engine or job.engine), svc.on(job.engine)
    if job.kind == "rename" and await _rename_went_through(svc, job):
        return job
    if job.kind == "rename":  # the new nodes hold the host ports: they go first
        removed = await remove_job_resources(svc.docker, job.id)
        resumed = await _resumed(source, job, job.frozen)
    else:
        resumed = await _resumed(source, job, job.frozen)
        removed = await remove_job_resources(svc.docker, job.id)
        if source.engine != svc.engine:  # its copy helpers and commits on the source's engine
            removed += await remove_job_resources(source.docker, job.id)
    if job.kind == "refresh":
        await _restore_set_aside(svc.docker, job)
    error = (
        f"clonebot stopped during {job.step or 'the start'}; recovery resumed "
        f"{resumed} source container(s) and removed {removed} resource(s) the job had made"
    )
    async with svc.sessions() as session, session.begin():
        await close_job(
            session, job, action=f"{job.kind} recovered", state=JobState.ROLLED_BACK, error=error
        )
    job.state, job.error = JobState.ROLLED_BACK, error
    return job


async def _rename_went_through(svc: Services, job: Job) -> bool:
    """Finish a rename whose new nodes all ran: only the old ones were left to remove."""
    if not any(entry["how"] == "replaced" for entry in job.frozen):
        return False
    old = [entry["container"] for entry in job.frozen]
    left = [cid for cid in old if await svc.docker.find_container(cid) is not None]
    await finish_rename(svc.docker, name=job.environment, old=left)
    async with svc.sessions() as session, session.begin():
        await close_job(session, job, action="rename recovered", state=JobState.SUCCEEDED)
    job.state = JobState.SUCCEEDED
    return True


async def _restore_set_aside(docker: DockerClient, job: Job) -> None:
    """A refresh renames the clone's old stateful nodes aside: bring them back."""
    suffix = f"-old-{job.id}"
    for container in await docker.list_containers(
        labels=[f"com.docker.compose.project={job.environment}"]
    ):
        name = container["Names"][0].lstrip("/")
        if name.endswith(suffix):
            await docker.rename_container(container["Id"], name.removesuffix(suffix))
            await docker.start_container(container["Id"])

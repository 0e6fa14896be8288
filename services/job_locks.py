"""Jobs on one environment, across every process sharing the database.

The locks are the rows of the jobs table, so a second process sees them as the first does:

- a job holds the environments it works on from when it is recorded until it ends: shared
  for a source it only reads (clones of one source run together), exclusive for an
  environment it changes (rename, delete, refresh into it, clone into its name);
- a source container is frozen by one job at a time: a job writes the containers it is about
  to freeze into its ``frozen`` before pausing them, and waits while another job's ``frozen``
  names one of them (freezes of one source are serialized; none unfreezes another's);
- at most ``CLONEBOT_MAX_JOBS`` jobs run at once; a job waiting for a slot says so;
- the disk a job's copy will still write is reserved: another job's disk check counts it.

A lock of a job whose process died is held until recovery closes that job (its sources are
resumed first), or, for a queued job, until its lease lapses. Each check and the write that
takes the lock run in one transaction no other check runs beside: on SQLite every write
transaction does (``BEGIN IMMEDIATE``, see ``storage/db.py``), on PostgreSQL a
transaction-scoped advisory lock does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import assert_never

from sqlalchemy import select, text

from services.errors import Busy, NotEnoughDisk
from services.workers import worker_is_gone
from storage.db import AsyncSession
from storage.models import UNFINISHED, Job, JobState, utcnow

# any fixed number: the PostgreSQL advisory lock every job lock is checked and taken under
_JOB_LOCK = 0x636C6F6E656A6F62  # "clonejob"


class JobKind(StrEnum):
    CLONE = "clone"
    REFRESH = "refresh"
    RENAME = "rename"
    DELETE = "delete"
    STOP = "stop"
    START = "start"


def job_kind(job: Job) -> JobKind | None:
    """The job's kind, or None for one this clonebot does not know (a newer one's, say)."""
    try:
        return JobKind(job.kind)
    except ValueError:
        return None


@dataclass(frozen=True)
class Hold:
    environment: str
    exclusive: bool


def holds(job: Job) -> list[Hold]:
    """What a job holds while unfinished; an unknown kind holds its environment exclusively."""
    kind = job_kind(job)
    mine = [Hold(job.environment, exclusive=True)]
    if kind is None:
        return mine
    match kind:
        case JobKind.CLONE | JobKind.REFRESH:
            return mine + ([Hold(job.source, exclusive=False)] if job.source else [])
        case JobKind.RENAME:
            return [*mine, Hold(str(job.params.get("to", "")), exclusive=True)]
        case JobKind.DELETE | JobKind.STOP | JobKind.START:
            return mine
        case _:
            assert_never(kind)


def is_live(job: Job, *, now: datetime) -> bool:
    """An unfinished job whose process still runs (or whose lease has not lapsed)."""
    if job.state not in UNFINISHED:
        return False
    return not worker_is_gone(job.claimed_by, lease_until=job.lease_until, now=now)


async def serialize(session: AsyncSession) -> None:
    """Make the rest of this transaction the only one checking or taking a job lock."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _JOB_LOCK})


async def unfinished_jobs(session: AsyncSession) -> list[Job]:
    query = select(Job).where(Job.state.in_(UNFINISHED)).order_by(Job.created_at)
    return list((await session.scalars(query)).all())


async def check_not_busy(session: AsyncSession, job: Job) -> None:
    """Raise ``Busy`` when another live job holds what ``job`` needs, naming it."""
    now = utcnow()
    mine = holds(job)
    for other in await unfinished_jobs(session):
        live = is_live(other, now=now)
        # a queued job of a dead process is run, if ever, by `serve`, checked again then; a
        # started one holds what it holds until recovery has put things back
        if other.id == job.id or (other.state == JobState.QUEUED and not live):
            continue
        for theirs in holds(other):
            for wanted in mine:
                if wanted.environment == theirs.environment and (
                    wanted.exclusive or theirs.exclusive
                ):
                    raise Busy(
                        wanted.environment,
                        kind=other.kind,
                        job=other.id,
                        age_s=_age(other),
                        gone=not live,
                    )


def _age(job: Job) -> int:
    since = job.started_at or job.created_at
    return max(0, int((utcnow() - since).total_seconds())) if since is not None else 0


async def free_slot(session: AsyncSession, *, job_id: str, max_jobs: int) -> str | None:
    """None when a job may start now; else what it waits for."""
    now = utcnow()
    running = [
        j for j in await unfinished_jobs(session)
        if j.state == JobState.RUNNING and j.id != job_id and is_live(j, now=now)
    ]  # fmt: skip
    if len(running) < max_jobs:
        return None
    names = ", ".join(f"{j.kind} {j.environment}" for j in running[:3])
    return f"a free slot: {len(running)} jobs run (CLONEBOT_MAX_JOBS={max_jobs}): {names}"


async def freeze_holder(
    session: AsyncSession, *, job_id: str, containers: set[str]
) -> tuple[Job, str] | None:
    """Another unfinished job that has one of ``containers`` frozen, and which one."""
    for other in await unfinished_jobs(session):
        if other.id == job_id:
            continue
        for entry in other.frozen or []:
            if entry.get("container") in containers and entry.get("how") in FROZEN:
                return other, str(entry["container"])
    return None


FROZEN = ("paused", "stopped")


def outstanding_bytes(job: Job) -> int:
    """What a running job's copy will still write: reserved, less what it has copied."""
    copied = sum(int(row.get("copied", 0)) for row in job.steps or [] if isinstance(row, dict))
    return max(0, job.reserved_bytes - copied)


async def reserved_by_others(session: AsyncSession, *, job_id: str) -> int:
    """What other live jobs will still write on the disk of this job's engine."""
    now = utcnow()
    jobs = await unfinished_jobs(session)
    engine = next((j.engine for j in jobs if j.id == job_id), None)
    return sum(
        outstanding_bytes(j)
        for j in jobs
        if j.id != job_id and is_live(j, now=now) and engine in (None, j.engine)
    )


# -- the disk check's port ----------------------------------------------------------------
# planning checks the disk with no database at hand; a job's run lends it this one
DiskReserver = Callable[[int, int, int], Awaitable[None]]  # copy, reserve, free bytes
_disk_reserver: ContextVar[DiskReserver | None] = ContextVar("disk_reserver", default=None)


@contextmanager
def reserving_disk(reserver: DiskReserver) -> Iterator[None]:
    """Within the block (and tasks started in it), disk checks reserve through ``reserver``."""
    token = _disk_reserver.set(reserver)
    try:
        yield
    finally:
        _disk_reserver.reset(token)


async def reserve_disk(*, copy: int, reserve: int, free: int) -> None:
    """Refuse a copy the disk cannot take beside what running jobs will still write; else
    keep ``copy`` bytes reserved for the job (when a job runs this; else only check)."""
    reserver = _disk_reserver.get()
    if reserver is not None:
        await reserver(copy, reserve, free)
    elif copy + reserve > free:
        raise NotEnoughDisk(needed=copy + reserve, free=free)

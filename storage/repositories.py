"""Reading and writing the tables, one small function per question the services ask."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import (
    AuditEntry,
    ChannelBinding,
    Collaborator,
    EnvironmentRecord,
    IdempotencyKey,
    Job,
    JobState,
    utcnow,
)


# -- environments -------------------------------------------------------------------------
async def get_environment(session: AsyncSession, name: str) -> EnvironmentRecord | None:
    found = await session.scalars(select(EnvironmentRecord).where(EnvironmentRecord.name == name))
    return found.one_or_none()


async def list_environments(session: AsyncSession) -> Sequence[EnvironmentRecord]:
    return (await session.scalars(select(EnvironmentRecord).order_by(EnvironmentRecord.name))).all()


async def delete_environment(session: AsyncSession, name: str) -> None:
    await session.execute(delete(EnvironmentRecord).where(EnvironmentRecord.name == name))


def set_collaborator(record: EnvironmentRecord, *, user: str, role: str) -> None:
    for collaborator in record.collaborators:
        if collaborator.user == user:
            collaborator.role = role
            return
    record.collaborators.append(Collaborator(user=user, role=role))


def bind_channel(record: EnvironmentRecord, *, channel: str) -> None:
    if all(binding.channel != channel for binding in record.channels):
        record.channels.append(ChannelBinding(channel=channel))


# -- jobs ---------------------------------------------------------------------------------
async def get_job(session: AsyncSession, job_id: str) -> Job | None:
    return await session.get(Job, job_id)


async def list_jobs(session: AsyncSession, *, limit: int = 50) -> Sequence[Job]:
    query = select(Job).order_by(Job.created_at.desc()).limit(limit)
    return (await session.scalars(query)).all()


async def jobs_in_state(session: AsyncSession, state: str) -> Sequence[Job]:
    return (await session.scalars(select(Job).where(Job.state == state))).all()


async def jobs_with_frozen_record(session: AsyncSession, *, finished: bool) -> list[Job]:
    """Jobs whose record still names source containers they froze: ended ones (finished in
    the last day) or unfinished ones. JSON is compared in Python: SQLite and PostgreSQL
    spell an empty JSON list differently."""
    if finished:
        query = select(Job).where(Job.finished_at >= utcnow() - timedelta(days=1))
    else:
        query = select(Job).where(Job.finished_at.is_(None))
    return [job for job in (await session.scalars(query)).all() if job.frozen]


async def claim_job(
    session: AsyncSession, *, job_id: str, worker: str, lease_until: datetime
) -> bool:
    """Mark a queued job running for ``worker``; False if another worker got it first.

    One conditional UPDATE: atomic on SQLite and PostgreSQL alike, so a job runs once.
    """
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.QUEUED)
        .values(
            state=JobState.RUNNING, claimed_by=worker, lease_until=lease_until, started_at=utcnow()
        )
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def renew_lease(
    session: AsyncSession, *, job_id: str, worker: str, lease_until: datetime
) -> bool:
    """Extend ``worker``'s lease; False when the job is no longer its (taken over, ended)."""
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.claimed_by == worker, Job.state == JobState.RUNNING)
        .values(lease_until=lease_until)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def update_job(session: AsyncSession, job_id: str, **values: Any) -> None:
    await session.execute(update(Job).where(Job.id == job_id).values(**values))


async def claim_message(session: AsyncSession, job_id: str, *, channel: str) -> bool:
    """True for the one caller that gets to post the job's Slack message."""
    claim = (
        update(Job)
        .where(Job.id == job_id, Job.slack_channel.is_(None))
        .values(slack_channel=channel)
    )
    return bool((await session.execute(claim)).rowcount)  # type: ignore[attr-defined]


async def job_for_key(session: AsyncSession, key: str) -> Job | None:
    found = await session.get(IdempotencyKey, key)
    if found is None or found.job_id is None:
        return None
    return await session.get(Job, found.job_id)


async def expire_idempotency_keys(session: AsyncSession, *, before: datetime) -> int:
    """Forget deliveries acted on before ``before`` (Slack retries within minutes); how many."""
    result = await session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- audit --------------------------------------------------------------------------------
def record_audit(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    environment: str | None,
    channel: str | None,
    allowed: bool,
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEntry(
            actor=actor,
            action=action,
            environment=environment,
            channel=channel,
            allowed=allowed,
            reason=reason,
            detail=detail or {},
        )
    )


# ``record_audit`` written at once, by an INSERT built once, on a connection (its columns'
# defaults apply): for a swap, which waits under load for the CPU a session's flush takes
AUDIT_INSERT = insert(AuditEntry)


async def list_audit(
    session: AsyncSession,
    *,
    environment: str | None = None,
    since: datetime | None = None,
    before: int | None = None,
    limit: int = 200,
) -> Sequence[AuditEntry]:
    """Entries newest first: about ``environment``, made at ``since`` or later, and older than
    entry ``before`` (the last id of the page before: pages by id, never by offset, so an
    entry written meanwhile neither repeats nor hides one)."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if environment is not None:
        query = query.where(AuditEntry.environment == environment)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    return (await session.scalars(query)).all()

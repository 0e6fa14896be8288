"""Limits per user: how many clones, and how much copied data, before a new one is refused.

``CLONEBOT_MAX_CLONES_PER_USER`` is checked when a clone is asked for;
``CLONEBOT_MAX_BYTES_PER_USER`` when its copy is planned (only then is its size known), beside
the copies other jobs of the same user are still making. Admins may exceed both. A refusal
says what is used and what to delete.
"""

from __future__ import annotations

from sqlalchemy import func, select

from services.errors import QuotaExceeded, size_text
from services.settings import Settings
from storage.db import AsyncSession
from storage.models import UNFINISHED, EnvironmentRecord, Job

_SHOWN = 5  # clones named in a refusal, the biggest first


async def check_clone_count(session: AsyncSession, settings: Settings, *, user: str) -> None:
    """Refuse a new clone to a user who has CLONEBOT_MAX_CLONES_PER_USER of them already."""
    most = settings.max_clones_per_user
    if most is None or user in settings.admins:
        return
    clones = await _clones_of(session, user)
    if len(clones) >= most:
        raise QuotaExceeded(
            f"you have {len(clones)} clone(s), the most you may have "
            f"(CLONEBOT_MAX_CLONES_PER_USER={most}): delete one first, "
            f"like {_names(clones)}"
        )


async def check_copied_bytes(
    session: AsyncSession, settings: Settings, *, job: Job, copy: int
) -> None:
    """Refuse a copy of ``copy`` bytes that would take the owner of ``job``'s environment past
    CLONEBOT_MAX_BYTES_PER_USER (the owner's other clones, and the copies of their other
    running jobs, counted)."""
    most = settings.max_bytes_per_user
    if most is None or job.requester in settings.admins:
        return
    record = await session.scalar(
        select(EnvironmentRecord).where(EnvironmentRecord.name == job.environment)
    )
    owner = record.owner if record is not None and record.owner else job.requester
    clones = [c for c in await _clones_of(session, owner) if c.name != job.environment]
    held = sum(c.copied_bytes for c in clones)
    running = await session.scalar(
        select(func.coalesce(func.sum(Job.reserved_bytes), 0)).where(
            Job.requester == owner, Job.state.in_(UNFINISHED), Job.id != job.id
        )
    )
    used = held + int(running or 0)
    if used + copy > most:
        raise QuotaExceeded(
            f"this copy needs {size_text(copy)} and your clones already hold {size_text(used)} "
            f"(CLONEBOT_MAX_BYTES_PER_USER={size_text(most)}): delete one first, "
            f"like {_names(clones, sizes=True)}"
        )


async def _clones_of(session: AsyncSession, user: str) -> list[EnvironmentRecord]:
    query = select(EnvironmentRecord).where(
        EnvironmentRecord.owner == user,
        EnvironmentRecord.cloned_from.is_not(None),
        EnvironmentRecord.state.in_(("creating", "ready")),
    )
    return list((await session.scalars(query)).all())


def _names(clones: list[EnvironmentRecord], *, sizes: bool = False) -> str:
    biggest = sorted(clones, key=lambda c: (-c.copied_bytes, c.name))[:_SHOWN]
    if not biggest:
        return "none: wait for your running jobs to end"
    named = [f"{c.name} ({size_text(c.copied_bytes)})" if sizes else c.name for c in biggest]
    more = f" and {len(clones) - _SHOWN} more" if len(clones) > _SHOWN else ""
    return ", ".join(named) + more

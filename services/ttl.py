"""A clone's time to live, as asked for: its expiry date, and who may give it none."""

from __future__ import annotations

from datetime import datetime

from services.context import Services
from services.durations import parse_duration
from services.errors import Forbidden
from services.settings import Settings
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import utcnow


def clone_expiry(
    settings: Settings, *, ttl: str | None, may_keep: bool, source: str
) -> datetime | None:
    """When a clone asked for now expires: ``ttl`` (the user's words) or the default.
    ``never`` only for ``may_keep`` (the source's owner, an admin)."""
    life = settings.default_ttl if ttl is None else parse_duration(ttl, what="--ttl")
    if life is None and ttl is not None and not may_keep:
        raise Forbidden(
            f"only {source}'s owner or an admin may keep a clone for ever (--ttl never)"
        )
    return None if life is None else utcnow() + life


async def may_keep(svc: Services, session: AsyncSession, *, user: str, source: str) -> bool:
    """Whether ``user`` may give a clone of ``source`` no expiry: its owner, or an admin."""
    if user in svc.settings.admins:
        return True
    record = await repo.get_environment(session, source)
    return record is not None and record.owner == user

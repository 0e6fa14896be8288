"""A clone's time to live, as asked for: its expiry date, and who may give it none."""

from __future__ import annotations

from datetime import datetime, timedelta

from services.context import Services
from services.durations import describe_duration, parse_duration
from services.errors import Forbidden
from services.settings import Settings
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import utcnow


def clone_expiry(
    settings: Settings, *, ttl: str | None, may_keep: bool, source: str
) -> datetime | None:
    """When a clone asked for now expires: ``ttl`` (the user's words) or the default.
    ``never``, or longer than CLONEBOT_MAX_TTL, only for ``may_keep`` (the owner of the
    source it all comes from, an admin)."""
    life = settings.default_ttl if ttl is None else parse_duration(ttl, what="--ttl")
    if ttl is not None and not may_keep:
        check_life(settings, life=life, source=source)
    return None if life is None else utcnow() + life


def check_life(settings: Settings, *, life: timedelta | None, source: str) -> None:
    """Refuse a life of ``never``, or past CLONEBOT_MAX_TTL, to someone who may not keep it."""
    if life is None:
        raise Forbidden(f"only {source}'s owner or an admin may keep a clone for ever (never)")
    most = settings.max_ttl
    if most is not None and life > most:
        raise Forbidden(
            f"only {source}'s owner or an admin may keep a clone longer than "
            f"{describe_duration(most)} (CLONEBOT_MAX_TTL)"
        )


async def original_source(session: AsyncSession, name: str) -> str:
    """The environment a clone comes from, through its clones' clones: the first that is not
    a clone (or the last one recorded)."""
    seen = {name}
    while (record := await repo.get_environment(session, name)) is not None:
        if record.cloned_from is None or record.cloned_from in seen:
            break
        name = record.cloned_from
        seen.add(name)
    return name


async def may_keep(svc: Services, session: AsyncSession, *, user: str, origin: str) -> bool:
    """Whether ``user`` may give a clone no expiry (or a long one): the owner of ``origin``,
    the source it all comes from (``original_source``: a clone of one's clone of prod is
    still prod's data), or an admin."""
    if user in svc.settings.admins:
        return True
    record = await repo.get_environment(session, origin)
    return record is not None and record.owner == user

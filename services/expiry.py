"""Clones expire: reminded a day and an hour before, stopped when due, deleted after a grace.

A clone's expiry is set when it is asked for (``--ttl``, else ``CLONEBOT_DEFAULT_TTL``) and
moved by ``extend``. Sources never expire. A clone that serves a custom domain or takes part
in a route is never stopped or deleted by its expiry: its owner is told instead; a protected
one is stopped, never deleted (that needs a person's approval). ``serve``
sweeps every ``CLONEBOT_EXPIRY_CHECK`` seconds (``sweep_expiry``); the stop and the delete
are jobs asked in the owner's name, checked again as they run like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Literal

from sqlalchemy import select, update

from services import access
from services.access import Request
from services.context import Services
from services.durations import parse_duration
from services.errors import BadRequest, ClonebotError, NotAClone
from services.jobs import run_job, serving_reason, submit_delete, submit_start, submit_stop
from services.permissions import Action
from services.sleep import Stopped
from services.ttl import check_life, may_keep, original_source
from storage import repositories as repo
from storage.models import EnvironmentRecord, Job, JobState, utcnow

log = logging.getLogger(__name__)


class Stage(IntEnum):
    """How far a clone's expiry went; back to NONE whenever it is extended."""

    NONE = 0
    DAY_BEFORE = 1  # reminded a day before
    HOUR_BEFORE = 2  # reminded an hour before
    KEPT = 3  # due, but it serves traffic: its owner was told it is kept
    STOPPED = 4  # due, and stopped


# the latest first: a clone asked for with a short life gets one reminder, not two
REMINDERS = ((Stage.HOUR_BEFORE, timedelta(hours=1)), (Stage.DAY_BEFORE, timedelta(days=1)))


@dataclass(frozen=True)
class ExpiryNotice:
    """What the owner and the team are told; the front door words it."""

    kind: Literal["reminder", "kept", "stopped", "deleted"]
    environment: str
    owner: str | None
    expires_at: datetime
    deletes_at: datetime | None  # None: kept stopped for ever (CLONEBOT_EXPIRY_GRACE=never)
    reason: str = ""  # kept: what it serves
    channel: str | None = None  # the clone's own notify channel, if it has one


ExpirySink = Callable[[ExpiryNotice], Awaitable[None]]


async def log_notice(notice: ExpiryNotice) -> None:
    """Where no Slack listens (the command line's serve without it): the log."""
    log.info("expiry of %s: %s", notice.environment, notice.kind)


@dataclass(frozen=True)
class Extended:
    environment: str
    expires_at: datetime | None  # None: never
    start: Job | None  # it had been stopped by its expiry: the job starting it again


async def extend_environment(svc: Services, request: Request, *, name: str, by: str) -> Extended:
    """Put a clone's expiry ``by`` later (from now, if it is past); ``never`` removes it (the
    source's owner or an admin). A clone its expiry stopped is started again."""
    access.check_user(request.user)
    longer = parse_duration(by, what="the extension")
    async with svc.sessions() as session:
        _, record = await access.check_recorded(
            svc, session, request, name=name, action=Action.EXTEND
        )
        if record.cloned_from is None:
            raise NotAClone(name, "extend")
        if record.expires_at is None and longer is not None:
            raise BadRequest(f"{name} never expires: nothing to extend")
        now = utcnow()
        expires = None if longer is None else max(now, record.expires_at or now) + longer
        source = await original_source(session, record.cloned_from)
        async with access.audited_refusals(
            session, request, action=Action.EXTEND, environment=name
        ):
            if not await may_keep(svc, session, user=request.user, origin=source):
                life = None if expires is None else expires - now
                check_life(svc.settings, life=life, source=source)
        record.expires_at, record.expiry_stage = expires, Stage.NONE
        stopped = record.stopped == Stopped.EXPIRED
        detail = {"until": expires.isoformat() if expires else "never"}
        repo.record_audit(
            session, actor=request.user, action=Action.EXTEND.value, environment=name,
            channel=request.channel, allowed=True, detail=detail,
        )  # fmt: skip
        await session.commit()
    start = await submit_start(svc, request, name=name) if stopped else None
    return Extended(environment=name, expires_at=expires, start=start)


async def sweep_expiry(svc: Services, *, notify: ExpirySink) -> None:
    """Remind, stop or delete every clone whose time has come; a failure is logged and the
    next sweep tries again."""
    now = utcnow()
    query = select(EnvironmentRecord).where(
        EnvironmentRecord.expires_at.is_not(None),
        EnvironmentRecord.expires_at <= now + REMINDERS[-1][1],
        EnvironmentRecord.state == "ready",
    )
    async with svc.sessions() as session:
        due = list((await session.scalars(query.order_by(EnvironmentRecord.expires_at))).all())
    for record in due:
        try:
            await _sweep_one(svc, record, notify=notify, now=now)
        except ClonebotError as exc:
            log.warning("expiry of %s: %s; trying again later", record.name, exc.message)


async def _sweep_one(
    svc: Services, record: EnvironmentRecord, *, notify: ExpirySink, now: datetime
) -> None:
    assert record.expires_at is not None
    grace = svc.settings.expiry_grace
    # a protected clone's delete needs a person's approval: its expiry only stops it
    deletes_at = None if grace is None or record.protected else record.expires_at + grace

    def notice(kind: Literal["reminder", "kept", "stopped", "deleted"], reason: str = "") -> None:
        expires = record.expires_at or now
        told = ExpiryNotice(
            kind, record.name, record.owner, expires, deletes_at, reason, record.notify_channel
        )
        pending.append(told)

    pending: list[ExpiryNotice] = []
    if record.owner is None:  # the jobs are asked in its owner's name: an admin adopts it
        log.warning("expiry of %s: it has no owner; nothing done", record.name)
        return
    owner = Request(record.owner)
    if record.stopped == Stopped.EXPIRED:
        if deletes_at is not None and now >= deletes_at:
            job = await submit_delete(svc, owner, name=record.name, force=False, why="expired")
            if (await run_job(svc, job.id)).state == JobState.SUCCEEDED:
                notice("deleted")
    elif now >= record.expires_at:
        async with svc.sessions() as session:
            serving = await serving_reason(session, record.name, doing="stopping")
        if serving is not None:
            if await _advance(svc, record, Stage.KEPT):
                notice("kept", serving)
        else:
            job = await submit_stop(svc, owner, name=record.name, why=Stopped.EXPIRED)
            stopped = (await run_job(svc, job.id)).state == JobState.SUCCEEDED
            # told once, by the process that moved it (two may have stopped it)
            if stopped and await _advance(svc, record, Stage.STOPPED):
                notice("stopped")
    else:
        for stage, before in REMINDERS:
            if now >= record.expires_at - before:
                if await _advance(svc, record, stage):
                    notice("reminder")
                break
    for each in pending:
        await notify(each)


async def _advance(svc: Services, record: EnvironmentRecord, stage: Stage) -> bool:
    """Move the record's expiry to ``stage``, unless it is there already or was extended
    meanwhile: True for the one process (of those sharing the database) that moved it."""
    async with svc.sessions() as session, session.begin():
        result = await session.execute(
            update(EnvironmentRecord)
            .where(EnvironmentRecord.id == record.id, EnvironmentRecord.expiry_stage < stage)
            .where(EnvironmentRecord.expires_at == record.expires_at)
            .values(expiry_stage=stage)
        )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]

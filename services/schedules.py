"""Clones refreshed from their source on a schedule, run by ``serve``.

A schedule is a cron expression (five fields, read in an IANA time zone, UTC unless told) set
on a clone by whoever may refresh it now. ``serve`` sweeps every ``CLONEBOT_EXPIRY_CHECK``
seconds (``sweep_schedules``): a due schedule is claimed by moving its ``next_run`` on (one
process of those sharing the database wins), then its refresh is asked in the name of who
set it and checked again as any job is. Occurrences missed while nobody served run once.
A clone that serves a custom domain or a route, or that another job holds, is skipped; a skip
or a failure is recorded on the schedule and told through the notice sink.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Literal
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy import Select, select, update

from services import access
from services.access import Request
from services.context import Services
from services.errors import BadRequest, Busy, ClonebotError, NotAClone
from services.jobs import run_job, serving_reason, submit_refresh
from services.permissions import Action
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import EnvironmentRecord, JobState, RefreshSchedule, utcnow

log = logging.getLogger(__name__)

WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron's numbering, 0 to 6
CRON_HELP = 'five fields, minute hour day month weekday, like "0 3 * * *"'


class Outcome(StrEnum):
    """How a schedule's last occurrence went."""

    REFRESHED = "refreshed"
    SKIPPED = "skipped"  # the clone serves traffic, is stopped, or another job holds it
    FAILED = "failed"  # refused as it ran (rights lost, say), or the refresh failed


@dataclass(frozen=True)
class Schedule:
    environment: str
    cron: str
    timezone: str
    set_by: str
    next_run: datetime
    last_run: datetime | None = None
    last_outcome: Outcome | None = None
    last_reason: str = ""
    last_job: str | None = None

    @property
    def spoken(self) -> str:
        """``daily 03:00 UTC``, ``weekly mon 03:00 UTC``, or the cron expression."""
        return f"{spoken_cron(self.cron)} {self.timezone}"


@dataclass(frozen=True)
class ScheduleNotice:
    """A scheduled refresh that did not happen; the front door words it."""

    kind: Literal["skipped", "failed"]
    environment: str
    set_by: str  # who set the schedule: its refreshes are asked in their name
    owner: str | None
    reason: str
    next_run: datetime
    job: str | None = None  # the refresh job, when one was recorded
    channel: str | None = None  # the clone's own notify channel, if it has one


ScheduleSink = Callable[[ScheduleNotice], Awaitable[None]]


async def log_notice(notice: ScheduleNotice) -> None:
    """Where no Slack listens: the log."""
    log.warning("scheduled refresh of %s %s: %s", notice.environment, notice.kind, notice.reason)


# -- the words ------------------------------------------------------------------------------
def cron_of_words(words: Sequence[str]) -> tuple[str, str]:
    """``daily 03:00 [ZONE]`` or ``weekly mon 03:00 [ZONE]`` as a cron expression and its time
    zone (UTC unless named)."""
    words = [w.lower() if i < 2 else w for i, w in enumerate(words)]
    match words:
        case ["daily", at, *zone] if len(zone) <= 1:
            hour, minute = _time_of(at)
            return f"{minute} {hour} * * *", zone[0] if zone else "UTC"
        case ["weekly", day, at, *zone] if len(zone) <= 1:
            if day[:3] not in WEEKDAYS:
                raise BadRequest(f"{day!r} is not a day of the week: mon, tue … sun")
            hour, minute = _time_of(at)
            return f"{minute} {hour} * * {WEEKDAYS.index(day[:3])}", zone[0] if zone else "UTC"
    raise BadRequest("say `daily HH:MM` or `weekly DAY HH:MM`, a time zone after if not UTC")


def _time_of(at: str) -> tuple[int, int]:
    hour, _, minute = at.partition(":")
    if hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60:
        return int(hour), int(minute)
    raise BadRequest(f"{at!r} is not a time of day: HH:MM, like 03:00")


def spoken_cron(cron: str) -> str:
    """The words ``cron_of_words`` reads, where the expression is one of theirs."""
    minute, hour, day, month, weekday = cron.split()
    if not (minute.isdigit() and hour.isdigit() and day == month == "*"):
        return f"cron `{cron}`"
    at = f"{int(hour):02d}:{int(minute):02d}"
    if weekday == "*":
        return f"daily {at}"
    return f"weekly {WEEKDAYS[int(weekday) % 7]} {at}" if weekday.isdigit() else f"cron `{cron}`"


def check_cron(cron: str, timezone: str = "UTC") -> tuple[str, tzinfo]:
    """The expression, its fields single-spaced, and the zone; ``BadRequest`` saying what is
    wrong with either."""
    fields = cron.split()
    if len(fields) != 5 or not croniter.is_valid(" ".join(fields)):
        raise BadRequest(f"{cron!r} is not a cron schedule: {CRON_HELP}")
    return " ".join(fields), _zone(timezone)


def _zone(name: str) -> tzinfo:
    if name.upper() == "UTC":  # needs no time zone database
        return UTC
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        raise BadRequest(f"{name!r} is not a time zone: an IANA name like Europe/Paris") from None


def next_occurrence(cron: str, *, timezone: str, after: datetime) -> datetime:
    """The first occurrence strictly after ``after``, in UTC (the cron read in ``timezone``)."""
    start = after.astimezone(_zone(timezone))
    return croniter(cron, start).get_next(datetime).astimezone(UTC)


# -- setting, showing, listing ----------------------------------------------------------------
async def set_schedule(
    svc: Services, request: Request, *, name: str, cron: str, timezone: str = "UTC"
) -> Schedule:
    """Refresh clone ``name`` on ``cron`` (read in ``timezone``), replacing any schedule it had.
    Who may refresh it now may: the refresh right on the clone and the clone right on its
    source; each refresh is asked in their name."""
    access.check_user(request.user)
    cron, _ = check_cron(cron, timezone)
    zone = "UTC" if timezone.upper() == "UTC" else timezone
    async with svc.sessions() as session:
        env, record = await access.check_request(
            svc, session, request, name=name, action=Action.REFRESH
        )
        source = record.cloned_from or env.cloned_from
        if source is None:
            raise NotAClone(name, "a scheduled refresh")
        await access.check_request(svc, session, request, name=source, action=Action.CLONE)
        schedule = await session.get(RefreshSchedule, record.id)
        if schedule is None:
            schedule = RefreshSchedule(environment_id=record.id)
            session.add(schedule)
        schedule.cron, schedule.timezone, schedule.set_by = cron, zone, request.user
        schedule.next_run = next_occurrence(cron, timezone=zone, after=utcnow())
        detail = {"cron": cron, "timezone": zone, "next_run": schedule.next_run.isoformat()}
        _audit(session, request, name=name, action="schedule refresh", detail=detail)
        await session.commit()
    return _schedule(schedule, name)


async def remove_schedule(svc: Services, request: Request, *, name: str) -> bool:
    """Refresh ``name`` on no schedule (it may be down); False if it had none."""
    access.check_user(request.user)
    async with svc.sessions() as session:
        _, record = await access.check_recorded(
            svc, session, request, name=name, action=Action.REFRESH
        )
        schedule = await session.get(RefreshSchedule, record.id)
        if schedule is None:
            return False
        await session.delete(schedule)
        _audit(session, request, name=name, action="unschedule refresh", detail={})
        await session.commit()
    return True


async def get_schedule(svc: Services, request: Request, *, name: str) -> Schedule | None:
    """``name``'s schedule, to whoever may see it."""
    access.check_user(request.user)
    async with svc.sessions() as session:
        _, record = await access.check_recorded(
            svc, session, request, name=name, action=Action.VIEW
        )
        schedule = await session.get(RefreshSchedule, record.id)
    return None if schedule is None else _schedule(schedule, record.name)


async def list_schedules(svc: Services) -> list[Schedule]:
    """Every schedule, the next due first."""
    async with svc.sessions() as session:
        rows = (await session.execute(_with_names().order_by(RefreshSchedule.next_run))).all()
    return [_schedule(schedule, name) for schedule, name in rows]


def _with_names() -> Select[RefreshSchedule, str]:
    return select(RefreshSchedule, EnvironmentRecord.name).join(
        EnvironmentRecord, EnvironmentRecord.id == RefreshSchedule.environment_id
    )


def _schedule(schedule: RefreshSchedule, name: str) -> Schedule:
    outcome = Outcome(schedule.last_outcome) if schedule.last_outcome else None
    return Schedule(
        environment=name, cron=schedule.cron, timezone=schedule.timezone,
        set_by=schedule.set_by, next_run=schedule.next_run, last_run=schedule.last_run,
        last_outcome=outcome, last_reason=schedule.last_reason, last_job=schedule.last_job,
    )  # fmt: skip


def _audit(
    session: AsyncSession, request: Request, *, name: str, action: str, detail: dict[str, str]
) -> None:
    repo.record_audit(
        session, actor=request.user, action=action, environment=name,
        channel=request.channel, allowed=True, detail=detail,
    )  # fmt: skip


# -- the sweep ------------------------------------------------------------------------------
async def sweep_schedules(svc: Services, *, notify: ScheduleSink) -> None:
    """Refresh every clone whose schedule is due: once, however many occurrences were missed."""
    for due in await due_schedules(svc):
        await run_due(svc, due, notify=notify)


@dataclass(frozen=True)
class Due:
    schedule: RefreshSchedule
    environment: str


async def due_schedules(svc: Services) -> list[Due]:
    """The schedules whose next run has come, as read now (another process may run them)."""
    query = _with_names().where(RefreshSchedule.next_run <= utcnow())
    async with svc.sessions() as session:
        rows = (await session.execute(query.order_by(RefreshSchedule.next_run))).all()
    return [Due(schedule, name) for schedule, name in rows]


async def run_due(svc: Services, due: Due, *, notify: ScheduleSink) -> None:
    """Claim the occurrence, then refresh the clone unless it is in use; record and tell how
    it went. Nothing, if another process claimed it first."""
    schedule, name, now = due.schedule, due.environment, utcnow()
    if (next_run := await _claim(svc, schedule, now=now)) is None:
        return
    outcome, reason, job = await _refresh(svc, name=name, set_by=schedule.set_by)
    record = await _record(svc, schedule, outcome=outcome, reason=reason, job=job, now=now)
    if outcome is Outcome.REFRESHED:
        return
    kind: Literal["skipped", "failed"] = "skipped" if outcome is Outcome.SKIPPED else "failed"
    await notify(
        ScheduleNotice(
            kind=kind, environment=name, set_by=schedule.set_by,
            owner=record.owner if record else None, reason=reason, next_run=next_run,
            job=job, channel=record.notify_channel if record else None,
        )
    )  # fmt: skip


async def _claim(svc: Services, schedule: RefreshSchedule, *, now: datetime) -> datetime | None:
    """Move the schedule to its first occurrence after now, unless another process (or a new
    schedule set meanwhile) moved it first: the new next run for the one process that did."""
    next_run = next_occurrence(schedule.cron, timezone=schedule.timezone, after=now)
    async with svc.sessions() as session, session.begin():
        result = await session.execute(
            update(RefreshSchedule)
            .where(RefreshSchedule.environment_id == schedule.environment_id)
            .where(RefreshSchedule.next_run == schedule.next_run)
            .where(RefreshSchedule.cron == schedule.cron)
            .values(next_run=next_run)
        )
    return next_run if result.rowcount == 1 else None  # type: ignore[attr-defined]


async def _refresh(svc: Services, *, name: str, set_by: str) -> tuple[Outcome, str, str | None]:
    """Refresh ``name`` in ``set_by``'s name, unless it is in use: the outcome, why, the job."""
    async with svc.sessions() as session:
        record = await repo.get_environment(session, name)
        serving = await serving_reason(session, name, doing="refreshing")
    if record is not None and record.stopped:
        return Outcome.SKIPPED, f"{name} is stopped ({record.stopped}): wake it first", None
    if record is not None and record.protected:  # its refresh waits for a person's approval
        reason = f"{name} is protected: refresh it by hand (`/env refresh {name}`), to be approved"
        return Outcome.SKIPPED, reason, None
    if serving is not None:
        return Outcome.SKIPPED, serving, None
    try:
        job = await submit_refresh(svc, Request(set_by), name=name)
    except Busy as exc:
        return Outcome.SKIPPED, exc.message, None
    except ClonebotError as exc:  # refused: the setter's rights, say, are gone
        return Outcome.FAILED, exc.message, None
    try:
        done = await run_job(svc, job.id)
    except ClonebotError as exc:  # recorded on the job
        return Outcome.FAILED, exc.message, job.id
    if done.state != JobState.SUCCEEDED:
        return Outcome.FAILED, done.error or f"the refresh {done.state}", job.id
    return Outcome.REFRESHED, "", job.id


async def _record(
    svc: Services,
    schedule: RefreshSchedule,
    *,
    outcome: Outcome,
    reason: str,
    job: str | None,
    now: datetime,
) -> EnvironmentRecord | None:
    """Keep how the occurrence went on the schedule (and audit a skip or a failure): the
    clone's record, if it is still there."""
    async with svc.sessions() as session, session.begin():
        await session.execute(
            update(RefreshSchedule)
            .where(RefreshSchedule.environment_id == schedule.environment_id)
            .values(last_run=now, last_outcome=outcome.value, last_reason=reason, last_job=job)
        )
        record = await session.get(EnvironmentRecord, schedule.environment_id)
        if record is not None and outcome is not Outcome.REFRESHED:
            repo.record_audit(
                session, actor=schedule.set_by, action=f"scheduled refresh {outcome.value}",
                environment=record.name, channel=None, allowed=True, reason=reason,
                detail={"job": job} if job else {},
            )  # fmt: skip
    return record

"""Scheduled refreshes: who may set one, what a due one does, what it skips, how it follows
its clone, and that two sweeps sharing a database run an occurrence once. Real Docker
sources, on SQLite and PostgreSQL.

Time is moved by writing the schedule's ``next_run`` into the past: the sweep reads no clock
but the database's dates and ``utcnow``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from services.access import Request
from services.approvals import pending_approvals, set_protected
from services.context import Services, open_services
from services.errors import BadRequest, Forbidden, NotAClone
from services.jobs import run_job, submit_clone, submit_delete, submit_refresh, submit_rename
from services.ownership import hand_over_environment
from services.schedules import (
    Outcome,
    ScheduleNotice,
    cron_of_words,
    due_schedules,
    get_schedule,
    list_schedules,
    next_occurrence,
    run_due,
    set_schedule,
    spoken_cron,
    sweep_schedules,
)
from services.traffic import routing
from storage import repositories as repo
from storage.models import Job, RefreshSchedule, utcnow
from tests.conftest import OWNER, MakeSource, exec_output

STRANGER, TEAMMATE = "USTRANGER", "UTEAMMATE"
NEW_DATA = "echo new > /data/fresh; echo v2 > /etc/db/db.conf"
CLONE_HAS_NEW_DATA = "test -e /data/fresh && cat /data/fresh /etc/db/db.conf || echo old"


class Told:
    """The notices a sweep sends, as the front door would get them."""

    def __init__(self) -> None:
        self.notices: list[ScheduleNotice] = []

    async def __call__(self, notice: ScheduleNotice) -> None:
        self.notices.append(notice)


async def _clone(svc: Services, source: str) -> str:
    job = await submit_clone(svc, Request(OWNER), source=source, name=f"{source}-c")
    done = await run_job(svc, job.id)
    assert done.state == "succeeded", done.error
    return done.environment


async def _due(svc: Services, name: str, *, ago: timedelta) -> None:
    """Move time: the clone's schedule was due ``ago``."""
    async with svc.sessions() as session, session.begin():
        record = await repo.get_environment(session, name)
        assert record is not None
        await session.execute(
            update(RefreshSchedule)
            .where(RefreshSchedule.environment_id == record.id)
            .values(next_run=utcnow() - ago)
        )


async def _refreshes(svc: Services, name: str) -> list[Job]:
    async with svc.sessions() as session:
        jobs = await repo.list_jobs(session)
    return [j for j in jobs if j.kind == "refresh" and j.environment == name]


def test_the_words_are_daily_or_weekly_at_a_time_in_utc_unless_a_zone_is_named() -> None:
    assert cron_of_words(["daily", "03:00"]) == ("0 3 * * *", "UTC")
    assert cron_of_words(["weekly", "Mon", "3:30", "Europe/Paris"]) == (
        "30 3 * * 1",
        "Europe/Paris",
    )
    assert spoken_cron("30 3 * * 1") == "weekly mon 03:30"
    assert spoken_cron("0 3 * * *") == "daily 03:00"
    assert spoken_cron("0 3 * * 1-5") == "cron `0 3 * * 1-5`"
    for words, message in [
        (["daily", "25:00"], "not a time of day"),
        (["weekly", "someday", "03:00"], "not a day of the week"),
        (["hourly"], "daily HH:MM"),
    ]:
        with pytest.raises(BadRequest, match=message):
            cron_of_words(words)
    paris = next_occurrence(
        "0 3 * * *", timezone="Europe/Paris", after=datetime(2026, 7, 1, 12, tzinfo=UTC)
    )
    assert paris == datetime(2026, 7, 2, 1, tzinfo=UTC), "03:00 in Paris in summer is 01:00 UTC"


async def test_a_due_schedule_refreshes_the_clone_once_and_moves_to_the_next_occurrence(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=1)
    clone = await _clone(svc, source.name)
    schedule = await set_schedule(svc, Request(OWNER), name=clone, cron="0 3 * * *")
    assert (schedule.next_run.hour, schedule.next_run.minute) == (3, 0)
    assert timedelta(0) < schedule.next_run - utcnow() <= timedelta(days=1)
    await exec_output(svc.docker, f"{source.name}_db_1", NEW_DATA)
    await _due(svc, clone, ago=timedelta(days=3))  # serve was down: three occurrences missed
    told = Told()

    await sweep_schedules(svc, notify=told)
    await sweep_schedules(svc, notify=told)

    assert await exec_output(svc.docker, f"{clone}-db-1", CLONE_HAS_NEW_DATA) == "new\nv2"
    refreshes = await _refreshes(svc, clone)
    assert [(j.state, j.requester) for j in refreshes] == [("succeeded", OWNER)], "run once"
    after = await get_schedule(svc, Request(OWNER), name=clone)
    assert after is not None and told.notices == []
    assert after.last_outcome is Outcome.REFRESHED and after.last_job == refreshes[0].id
    assert (after.next_run.hour, after.next_run.minute) == (3, 0)
    assert timedelta(0) < after.next_run - utcnow() <= timedelta(days=1)


async def test_a_clone_that_serves_a_custom_domain_is_skipped_with_the_reason(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=1)
    clone = await _clone(svc, source.name)
    domain = f"{clone}.shop.test"
    await routing.add_domain(svc, Request(OWNER), env=clone, domain=domain)
    await set_schedule(svc, Request(OWNER), name=clone, cron="0 3 * * *")
    await exec_output(svc.docker, f"{source.name}_db_1", NEW_DATA)
    await _due(svc, clone, ago=timedelta(minutes=1))
    told = Told()

    await sweep_schedules(svc, notify=told)

    assert [(n.kind, n.environment, n.owner) for n in told.notices] == [("skipped", clone, OWNER)]
    assert f"{clone} serves {domain}" in told.notices[0].reason
    assert await exec_output(svc.docker, f"{clone}-db-1", CLONE_HAS_NEW_DATA) == "old"
    assert await _refreshes(svc, clone) == []
    after = await get_schedule(svc, Request(OWNER), name=clone)
    assert after is not None and after.last_outcome is Outcome.SKIPPED
    assert domain in after.last_reason and after.next_run > utcnow()
    async with svc.sessions() as session:
        audited = [(a.actor, a.action) for a in await repo.list_audit(session, environment=clone)]
    assert (OWNER, "scheduled refresh skipped") in audited


async def test_a_protected_clone_is_skipped_its_refresh_waits_for_a_person(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=1)
    clone = await _clone(svc, source.name)
    await set_schedule(svc, Request(OWNER), name=clone, cron="0 3 * * *")
    await set_protected(svc, Request(OWNER), name=clone, protected=True)
    await _due(svc, clone, ago=timedelta(minutes=1))
    told = Told()

    await sweep_schedules(svc, notify=told)

    assert [n.kind for n in told.notices] == ["skipped"]
    assert f"{clone} is protected: refresh it by hand" in told.notices[0].reason
    assert await _refreshes(svc, clone) == []
    assert await pending_approvals(svc) == [], "no approval asked that nobody sees"


async def test_a_clone_another_job_holds_is_skipped_as_busy(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=1)
    clone = await _clone(svc, source.name)
    await set_schedule(svc, Request(OWNER), name=clone, cron="*/5 * * * *")
    held = await submit_refresh(svc, Request(OWNER), name=clone)  # recorded, not yet run
    await _due(svc, clone, ago=timedelta(minutes=1))
    told = Told()

    await sweep_schedules(svc, notify=told)

    assert [n.kind for n in told.notices] == ["skipped"]
    assert f"{clone} is busy: refresh, job {held.id[:4]}" in told.notices[0].reason
    assert [j.id for j in await _refreshes(svc, clone)] == [held.id]
    await run_job(svc, held.id)


async def test_only_who_may_refresh_the_clone_now_may_schedule_it(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    clone = await _clone(svc, source.name)

    with pytest.raises(Forbidden):
        await set_schedule(svc, Request(STRANGER), name=clone, cron="0 3 * * *")
    await hand_over_environment(svc, Request(OWNER), name=clone, new_owner=TEAMMATE)
    with pytest.raises(Forbidden, match=f"{source.name} belongs to"):  # no right on the source
        await set_schedule(svc, Request(TEAMMATE), name=clone, cron="0 3 * * *")
    with pytest.raises(NotAClone):
        await set_schedule(svc, Request(OWNER), name=source.name, cron="0 3 * * *")
    with pytest.raises(BadRequest, match="not a cron schedule"):
        await set_schedule(svc, Request(OWNER), name=clone, cron="0 3 * * * *")

    assert await list_schedules(svc) == []
    async with svc.sessions() as session:
        on_clone = await repo.list_audit(session, environment=clone)
        on_source = await repo.list_audit(session, environment=source.name)
    assert (STRANGER, "refresh", False) in [(a.actor, a.action, a.allowed) for a in on_clone]
    assert (TEAMMATE, "clone", False) in [(a.actor, a.action, a.allowed) for a in on_source]


async def test_a_schedule_follows_a_rename_and_goes_with_the_delete(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    clone = await _clone(svc, source.name)
    await set_schedule(svc, Request(OWNER), name=clone, cron="0 4 * * 0")
    renamed = f"{source.name}-r"

    job = await submit_rename(svc, Request(OWNER), name=clone, new_name=renamed)
    assert (await run_job(svc, job.id)).state == "succeeded"

    assert [(s.environment, s.spoken) for s in await list_schedules(svc)] == [
        (renamed, "weekly sun 04:00 UTC")
    ]
    job = await submit_delete(svc, Request(OWNER), name=renamed, force=False)
    assert (await run_job(svc, job.id)).state == "succeeded"
    assert await list_schedules(svc) == []
    async with svc.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(RefreshSchedule)) == 0


async def test_two_sweeps_sharing_the_database_run_an_occurrence_once(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=1)
    clone = await _clone(svc, source.name)
    await set_schedule(svc, Request(OWNER), name=clone, cron="0 3 * * *")
    await _due(svc, clone, ago=timedelta(minutes=1))
    told = Told()

    # a second process: its own engine and connections on the same database; both have
    # read the schedule as due before either runs it
    async with open_services(svc.settings, migrate=False) as other:
        [mine], [theirs] = await due_schedules(svc), await due_schedules(other)
        await asyncio.gather(run_due(svc, mine, notify=told), run_due(other, theirs, notify=told))
        await sweep_schedules(other, notify=told)  # not due any more

    assert [j.state for j in await _refreshes(svc, clone)] == ["succeeded"]
    assert told.notices == [], "the loser neither refreshed nor found the clone busy"

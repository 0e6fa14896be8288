"""A clone's life: its expiry as asked for, the reminders, the stop, the delete, an extension;
stopping and starting a clone. Real Docker sources, on SQLite and PostgreSQL.

Time is moved by writing the clone's expiry date into its record: the sweep reads no clock
but the database's dates and ``utcnow``.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import update

from services.access import Request
from services.approvals import pending_approvals, set_protected
from services.context import Services
from services.environments import get_environment
from services.errors import BadRequest, EnvironmentNotFound, Forbidden, NotAClone
from services.expiry import ExpiryNotice, Stage, extend_environment, sweep_expiry
from services.jobs import run_job, submit_clone, submit_start, submit_stop
from services.ownership import hand_over_environment
from services.sleep import Stopped
from services.traffic import routing
from storage import repositories as repo
from storage.models import DomainBinding, EnvironmentRecord, utcnow
from tests.conftest import ADMIN, OWNER, MakeSource

STRANGER, TEAMMATE = "USTRANGER", "UTEAMMATE"


async def _record(svc: Services, name: str) -> EnvironmentRecord:
    async with svc.sessions() as session:
        record = await repo.get_environment(session, name)
    assert record is not None
    return record


async def _expire_in(svc: Services, name: str, left: timedelta) -> None:
    """Move time: the clone now expires ``left`` from now (negative: it expired)."""
    async with svc.sessions() as session, session.begin():
        await session.execute(
            update(EnvironmentRecord)
            .where(EnvironmentRecord.name == name)
            .values(expires_at=utcnow() + left)
        )


async def _clone(svc: Services, source: str, *, user: str = OWNER, ttl: str | None = None) -> str:
    job = await submit_clone(svc, Request(user), source=source, name=f"{source}-c", ttl=ttl)
    done = await run_job(svc, job.id)
    assert done.state == "succeeded", done.error
    return done.environment


async def _states(svc: Services, name: str) -> set[str]:
    return {n.state for n in (await get_environment(svc.docker, name)).nodes}


class Told:
    """The notices a sweep sends, as the front door would get them."""

    def __init__(self) -> None:
        self.notices: list[ExpiryNotice] = []

    async def __call__(self, notice: ExpiryNotice) -> None:
        self.notices.append(notice)

    def kinds(self) -> list[str]:
        return [n.kind for n in self.notices]


async def test_a_clone_expires_after_its_ttl_or_the_default_and_a_source_never(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=1)
    before = utcnow()
    job = await submit_clone(svc, Request(OWNER), source=source.name, name=f"{source.name}-a")
    short = await submit_clone(
        svc, Request(OWNER), source=source.name, name=f"{source.name}-b", ttl="3h"
    )

    default = (await _record(svc, job.environment)).expires_at
    asked = (await _record(svc, short.environment)).expires_at
    assert default is not None and asked is not None
    assert timedelta(days=7) <= default - before <= timedelta(days=7, minutes=1)
    assert timedelta(hours=3) <= asked - before <= timedelta(hours=3, minutes=1)
    await run_job(svc, job.id)
    await run_job(svc, short.id)
    assert (await _record(svc, source.name)).expires_at is None


async def test_a_bad_ttl_or_never_from_someone_else_is_refused_and_nothing_is_kept(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    name = f"{source.name}-x"
    for ttl in ("3x", "-1d", "", "0", "10000000w"):
        with pytest.raises(BadRequest, match="--ttl"):
            await submit_clone(svc, Request(OWNER), source=source.name, name=name, ttl=ttl)
    async with svc.sessions() as session:
        assert await repo.get_environment(session, name) is None, "refused: nothing kept"


async def test_only_the_sources_owner_or_an_admin_may_keep_a_clone_for_ever(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    kept = await submit_clone(
        svc, Request(OWNER), source=source.name, name=f"{source.name}-k", ttl="never"
    )
    assert (await _record(svc, kept.environment)).expires_at is None
    await run_job(svc, kept.id)
    clone = await _clone(svc, source.name)
    await hand_over_environment(svc, Request(OWNER), name=clone, new_owner=TEAMMATE)

    with pytest.raises(Forbidden, match=f"only {source.name}'s owner or an admin"):
        await extend_environment(svc, Request(TEAMMATE), name=clone, by="never")
    async with svc.sessions() as session:
        refusals = [a for a in await repo.list_audit(session, environment=clone) if not a.allowed]
    assert [(a.actor, a.action) for a in refusals] == [(TEAMMATE, "extend")], "audited"
    # nor through a clone of their own clone (it is still the source's data), nor for long
    for ttl in ("never", "5200w"):
        with pytest.raises(Forbidden, match=f"only {source.name}'s owner or an admin"):
            await submit_clone(svc, Request(TEAMMATE), source=clone, name=f"{clone}-x", ttl=ttl)
    with pytest.raises(Forbidden, match=r"longer than 30d \(CLONEBOT_MAX_TTL\)"):
        await extend_environment(svc, Request(TEAMMATE), name=clone, by="60d")
    long = await submit_clone(
        svc, Request(OWNER), source=kept.environment, name=f"{clone}-o", ttl="60d"
    )
    assert (await _record(svc, long.environment)).expires_at is not None
    await run_job(svc, long.id)
    assert (await _record(svc, clone)).expires_at is not None
    assert (await extend_environment(svc, Request(TEAMMATE), name=clone, by="3d")).expires_at
    assert (
        await extend_environment(svc, Request(ADMIN), name=clone, by="never")
    ).expires_at is None
    with pytest.raises(BadRequest, match="never expires"):
        await extend_environment(svc, Request(TEAMMATE), name=clone, by="1d")


async def test_reminders_come_once_each_then_the_clone_is_stopped_then_deleted(
    svc: Services, make_source: MakeSource
) -> None:
    svc = dataclasses.replace(
        svc, settings=svc.settings.model_copy(update={"expiry_grace": timedelta(hours=1)})
    )
    source = await make_source(web_nodes=1, db_nodes=1)
    clone = await _clone(svc, source.name, ttl="20h")
    told = Told()

    await sweep_expiry(svc, notify=told)
    await sweep_expiry(svc, notify=told)
    assert told.kinds() == ["reminder"], "a day before: one reminder, however many sweeps"
    await _expire_in(svc, clone, timedelta(minutes=30))
    await sweep_expiry(svc, notify=told)
    await sweep_expiry(svc, notify=told)
    assert told.kinds() == ["reminder", "reminder"], "an hour before: one more"
    assert told.notices[-1].owner == OWNER
    assert await _states(svc, clone) == {"running"}

    await _expire_in(svc, clone, timedelta(seconds=-1))
    await sweep_expiry(svc, notify=told)

    assert told.kinds()[-1] == "stopped"
    assert await _states(svc, clone) == {"exited"}, "its nodes are stopped, kept"
    record = await _record(svc, clone)
    assert (record.stopped, record.expiry_stage) == ("expired", Stage.STOPPED)
    assert told.notices[-1].deletes_at == told.notices[-1].expires_at + timedelta(hours=1)
    assert await _states(svc, source.name) == {"running"}, "the source is left alone"
    await sweep_expiry(svc, notify=told)
    assert told.kinds().count("stopped") == 1

    await _expire_in(svc, clone, timedelta(hours=-1, seconds=-1))
    await sweep_expiry(svc, notify=told)

    assert told.kinds()[-1] == "deleted"
    with pytest.raises(EnvironmentNotFound):
        await get_environment(svc.docker, clone)
    async with svc.sessions() as session:
        assert await repo.get_environment(session, clone) is None
        actions = [(a.actor, a.action) for a in await repo.list_audit(session, environment=clone)]
    assert (OWNER, "sleep or wake") in actions and (OWNER, "delete") in actions
    assert await _states(svc, source.name) == {"running"}


async def test_a_clone_that_serves_traffic_is_kept_and_its_owner_told_once(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    clone = await _clone(svc, source.name, ttl="1h")
    domain = f"{clone}.shop.test"
    await routing.add_domain(svc, Request(OWNER), env=clone, domain=domain)
    await _expire_in(svc, clone, timedelta(seconds=-1))
    told = Told()

    await sweep_expiry(svc, notify=told)
    await sweep_expiry(svc, notify=told)

    assert told.kinds() == ["kept"]
    assert domain in told.notices[0].reason
    assert await _states(svc, clone) == {"running"}

    await routing.remove_domain(svc, Request(OWNER), env=clone, domain=domain)
    await sweep_expiry(svc, notify=told)
    assert told.kinds() == ["kept", "stopped"], "freed, it goes the way of any expired clone"


async def test_an_extension_moves_the_expiry_and_starts_a_clone_its_expiry_stopped(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=1)
    clone = await _clone(svc, source.name, ttl="2h")
    await _expire_in(svc, clone, timedelta(seconds=-1))
    await sweep_expiry(svc, notify=Told())
    assert await _states(svc, clone) == {"exited"}

    with pytest.raises(Forbidden):
        await extend_environment(svc, Request(STRANGER), name=clone, by="1d")
    with pytest.raises(BadRequest, match="the extension"):
        await extend_environment(svc, Request(OWNER), name=clone, by="soon")
    extended = await extend_environment(svc, Request(OWNER), name=clone, by="1d")

    assert extended.expires_at is not None
    assert timedelta(hours=23, minutes=59) < extended.expires_at - utcnow() <= timedelta(days=1)
    assert extended.start is not None
    assert (await run_job(svc, extended.start.id)).state == "succeeded"
    assert await _states(svc, clone) == {"running"}
    record = await _record(svc, clone)
    assert (record.stopped, record.expiry_stage) == (None, Stage.NONE)

    later = await extend_environment(svc, Request(OWNER), name=clone, by="2d")
    assert later.start is None
    assert later.expires_at is not None
    assert later.expires_at - extended.expires_at == timedelta(days=2), "from its expiry"
    with pytest.raises(NotAClone):
        await extend_environment(svc, Request(OWNER), name=source.name, by="1d")


async def test_sleep_stops_a_clone_keeping_everything_and_wake_starts_it(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=2, db_nodes=1)
    clone = await _clone(svc, source.name)
    before = await get_environment(svc.docker, clone)
    volumes_before = {m.source for n in before.nodes for m in n.volumes}

    stopped = await run_job(svc, (await submit_stop(svc, Request(OWNER), name=clone)).id)

    assert stopped.state == "succeeded", stopped.error
    assert await _states(svc, clone) == {"exited"}
    env = await get_environment(svc.docker, clone)
    assert {m.source for n in env.nodes for m in n.volumes} == volumes_before
    assert (await _record(svc, clone)).stopped == "asked"
    with pytest.raises(NotAClone):
        await submit_stop(svc, Request(OWNER), name=source.name)
    with pytest.raises(Forbidden):
        await submit_start(svc, Request(STRANGER), name=clone)

    started = await run_job(svc, (await submit_start(svc, Request(OWNER), name=clone)).id)

    assert started.state == "succeeded", started.error
    assert await _states(svc, clone) == {"running"}
    assert (await _record(svc, clone)).stopped is None
    assert await _states(svc, source.name) == {"running"}


async def test_a_clone_serving_a_domain_may_not_be_put_to_sleep(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    clone = await _clone(svc, source.name)
    await routing.add_domain(svc, Request(OWNER), env=clone, domain=f"{clone}.shop.test")

    with pytest.raises(BadRequest, match="before stopping it"):
        await submit_stop(svc, Request(OWNER), name=clone)
    assert await _states(svc, clone) == {"running"}


async def test_a_protected_clone_is_stopped_at_its_expiry_but_never_deleted_by_it(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    clone = await _clone(svc, source.name, ttl="1h")
    await set_protected(svc, Request(OWNER), name=clone, protected=True)
    await _expire_in(svc, clone, timedelta(seconds=-1))
    told = Told()
    await sweep_expiry(svc, notify=told)
    assert await _states(svc, clone) == {"exited"}

    await _expire_in(svc, clone, timedelta(days=-3))
    await sweep_expiry(svc, notify=told)

    assert told.kinds() == ["stopped"]
    assert told.notices[0].deletes_at is None, "never told it will be deleted"
    assert await _states(svc, clone) == {"exited"}, "kept: deleting it needs an approval"
    assert await pending_approvals(svc) == []


async def test_an_expired_clone_wakes_only_once_extended_and_a_late_stop_is_refused(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    clone = await _clone(svc, source.name, ttl="1h")
    await _expire_in(svc, clone, timedelta(seconds=-1))
    # the sweep asked for the stop, then the owner extended it before the stop ran
    late = await submit_stop(svc, Request(OWNER), name=clone, why=Stopped.EXPIRED)
    await extend_environment(svc, Request(OWNER), name=clone, by="1d")
    with pytest.raises(BadRequest, match="was extended meanwhile"):
        await run_job(svc, late.id)
    assert await _states(svc, clone) == {"running"}

    await _expire_in(svc, clone, timedelta(seconds=-1))
    await sweep_expiry(svc, notify=Told())
    assert await _states(svc, clone) == {"exited"}
    with pytest.raises(BadRequest, match="expired and was stopped: extend it"):
        await submit_start(svc, Request(OWNER), name=clone)
    extended = await extend_environment(svc, Request(OWNER), name=clone, by="1d")
    assert extended.start is not None
    assert (await run_job(svc, extended.start.id)).state == "succeeded"
    assert await _states(svc, clone) == {"running"}


async def test_no_traffic_is_sent_to_a_clone_clonebot_stopped(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    clone = await _clone(svc, source.name)
    await run_job(svc, (await submit_stop(svc, Request(OWNER), name=clone)).id)

    with pytest.raises(BadRequest, match=rf"{clone} is stopped \(asked\): wake it first"):
        await routing.add_domain(svc, Request(OWNER), env=clone, domain=f"{clone}.shop.test")
    async with svc.sessions() as session:
        assert await session.get(DomainBinding, f"{clone}.shop.test") is None

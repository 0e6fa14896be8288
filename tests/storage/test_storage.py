"""The database layer on SQLite and on PostgreSQL: migrations, time zones, repositories."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from services.context import Services
from storage import repositories as repo
from storage.db import AsyncSession, alembic_config, create_engine, sessionmaker, upgrade
from storage.models import (
    AuditEntry,
    Base,
    ChannelBinding,
    Collaborator,
    EnvironmentRecord,
    IdempotencyKey,
    Job,
)

TABLES = {
    "environments",
    "collaborators",
    "channel_bindings",
    "jobs",
    "idempotency_keys",
    "audit_log",
    "domains",
    "routes",
    "refresh_schedules",
    "approvals",
    "engines",
    "certificates",
    "domain_https",
    "alembic_version",
}
PARIS_SUMMER = timezone(timedelta(hours=2))


def _job(*, environment: str = "shop", state: str = "queued", **values: object) -> Job:
    return Job(
        id=secrets.token_hex(6),
        kind="clone",
        state=state,
        environment=environment,
        source="prod",
        requester="UOWNER1",
        params={},
        steps=[],
        frozen=[],
        **values,
    )


async def _table_names(session: AsyncSession) -> set[str]:
    connection = await session.connection()
    return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def _count(session: AsyncSession, model: type[Base]) -> int:
    return int(await session.scalar(select(func.count()).select_from(model)) or 0)


# -- migrations ---------------------------------------------------------------------------
async def test_migrations_create_every_table(svc: Services) -> None:
    async with svc.sessions() as session:
        assert await _table_names(session) == TABLES


async def test_migrations_match_the_models(svc: Services) -> None:
    """No model change without its migration: the migrated schema is what the models say."""

    def differences(sync_connection: object) -> list[object]:
        context = MigrationContext.configure(sync_connection)  # type: ignore[arg-type]
        return list(compare_metadata(context, Base.metadata))

    async with svc.sessions() as session:
        connection = await session.connection()
        assert await connection.run_sync(differences) == []


async def test_upgrading_twice_changes_nothing_and_keeps_the_data(svc: Services) -> None:
    head = ScriptDirectory.from_config(alembic_config(svc.settings.database_url)).get_current_head()
    async with svc.sessions() as session, session.begin():
        session.add(EnvironmentRecord(name="kept", owner="UOWNER1"))

    await upgrade(svc.settings.database_url)
    await upgrade(svc.settings.database_url)

    async with svc.sessions() as session:
        assert await _table_names(session) == TABLES
        versions = (await session.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert [v for (v,) in versions] == [head]
        record = await repo.get_environment(session, "kept")
        assert record is not None and record.owner == "UOWNER1"


# -- time ---------------------------------------------------------------------------------
async def test_datetimes_come_back_aware_in_utc(svc: Services) -> None:
    created = datetime(2030, 6, 1, 14, 30, 15, 123456, tzinfo=PARIS_SUMMER)
    job = _job(created_at=created, lease_until=created + timedelta(seconds=30))
    async with svc.sessions() as session, session.begin():
        session.add(job)
        repo.record_audit(
            session, actor="UOWNER1", action="clone", environment="shop", channel=None, allowed=True
        )

    async with svc.sessions() as session:
        found = await repo.get_job(session, job.id)
        (entry,) = await repo.list_audit(session)
    assert found is not None
    for value in (found.created_at, found.lease_until, entry.at):
        assert value is not None and value.utcoffset() == timedelta(0), repr(value)
    assert found.created_at == created
    assert found.created_at.hour == 12, "14:30 in UTC+2 is 12:30 UTC"
    assert found.lease_until == datetime(2030, 6, 1, 12, 30, 45, 123456, tzinfo=UTC)
    assert abs(datetime.now(UTC) - entry.at) < timedelta(minutes=1)


async def test_datetimes_compare_by_instant_in_queries(svc: Services) -> None:
    job = _job(lease_until=datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    async with svc.sessions() as session, session.begin():
        session.add(job)

    async def lapsed_before(moment: datetime) -> bool:
        async with svc.sessions() as session:
            query = select(Job.id).where(Job.id == job.id, Job.lease_until < moment)
            return (await session.scalar(query)) is not None

    # 13:30 in UTC+2 is 11:30 UTC: before the lease ends, although 13 > 12 as written
    assert not await lapsed_before(datetime(2030, 1, 1, 13, 30, tzinfo=PARIS_SUMMER))
    assert await lapsed_before(datetime(2030, 1, 1, 14, 30, tzinfo=PARIS_SUMMER))


# -- environments, collaborators, channels ------------------------------------------------
async def test_collaborators_and_channels_round_trip(svc: Services) -> None:
    async with svc.sessions() as session, session.begin():
        record = EnvironmentRecord(name="shop", owner="UOWNER1", collaborators=[], channels=[])
        session.add(record)
        repo.set_collaborator(record, user="UVIEW1", role="viewer")
        repo.set_collaborator(record, user="UOPER1", role="viewer")
        repo.set_collaborator(record, user="UOPER1", role="operator")  # a role changes
        repo.bind_channel(record, channel="CTEAM")
        repo.bind_channel(record, channel="CTEAM")  # binding twice keeps one binding
        repo.bind_channel(record, channel="COPS")
        session.add(EnvironmentRecord(name="alpha", owner="UOTHER1"))

    async with svc.sessions() as session:
        found = await repo.get_environment(session, "shop")
        names = [r.name for r in await repo.list_environments(session)]
    assert found is not None
    assert found.owner == "UOWNER1" and found.state == "ready"
    assert {c.user: c.role for c in found.collaborators} == {
        "UVIEW1": "viewer",
        "UOPER1": "operator",
    }
    assert sorted(b.channel for b in found.channels) == ["COPS", "CTEAM"]
    assert names == ["alpha", "shop"]
    assert await _missing(svc, "nothere")


async def _missing(svc: Services, name: str) -> bool:
    async with svc.sessions() as session:
        return await repo.get_environment(session, name) is None


async def test_deleting_an_environment_removes_its_collaborators_and_channels(
    svc: Services,
) -> None:
    async with svc.sessions() as session, session.begin():
        for name in ("shop", "kept"):
            record = EnvironmentRecord(name=name, owner="UOWNER1", collaborators=[], channels=[])
            session.add(record)
            repo.set_collaborator(record, user="UVIEW1", role="viewer")
            repo.bind_channel(record, channel="CTEAM")

    async with svc.sessions() as session, session.begin():
        await repo.delete_environment(session, "shop")

    assert await _missing(svc, "shop")
    async with svc.sessions() as session:
        assert await _count(session, Collaborator) == 1
        assert await _count(session, ChannelBinding) == 1
        kept = await repo.get_environment(session, "kept")
    assert kept is not None and [c.user for c in kept.collaborators] == ["UVIEW1"]


async def test_an_environment_name_is_taken_once(svc: Services) -> None:
    async with svc.sessions() as session, session.begin():
        session.add(EnvironmentRecord(name="shop", owner="UOWNER1"))
    async with svc.sessions() as session:
        session.add(EnvironmentRecord(name="shop", owner="UOTHER1"))
        with pytest.raises(IntegrityError):
            await session.commit()


# -- audit ----------------------------------------------------------------------------------
async def test_audit_is_listed_newest_first_and_filtered_by_environment(svc: Services) -> None:
    written = [
        ("UOWNER1", "clone", "shop", True, ""),
        ("USTRANGE", "delete", "shop", False, "shop belongs to <@UOWNER1>"),
        ("UOWNER1", "share", "blog", True, ""),
        ("UADMIN1", "adopt", "shop", True, ""),
    ]
    for actor, action, environment, allowed, reason in written:
        async with svc.sessions() as session, session.begin():
            repo.record_audit(
                session,
                actor=actor,
                action=action,
                environment=environment,
                channel="CTEAM",
                allowed=allowed,
                reason=reason,
                detail={"n": len(action)},
            )

    async with svc.sessions() as session:
        everything = await repo.list_audit(session)
        shop = await repo.list_audit(session, environment="shop")
        latest = await repo.list_audit(session, limit=1)

    assert [e.action for e in everything] == ["adopt", "share", "delete", "clone"]
    assert [e.action for e in shop] == ["adopt", "delete", "clone"]
    assert [e.action for e in latest] == ["adopt"]
    refusal = shop[1]
    assert (refusal.actor, refusal.allowed, refusal.channel) == ("USTRANGE", False, "CTEAM")
    assert refusal.reason == "shop belongs to <@UOWNER1>"
    assert refusal.detail == {"n": 6}
    assert all(e.allowed for e in shop if e is not refusal)
    assert [e.at for e in everything] == sorted((e.at for e in everything), reverse=True)


# -- jobs and idempotency keys ----------------------------------------------------------------
async def test_jobs_round_trip_and_are_listed_newest_first(svc: Services) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    jobs = [_job(environment=f"env{i}", created_at=start + timedelta(minutes=i)) for i in range(3)]
    async with svc.sessions() as session, session.begin():
        session.add_all(jobs)
    async with svc.sessions() as session, session.begin():
        session.add(IdempotencyKey(key="delivery-1", job_id=jobs[1].id))
        session.add(IdempotencyKey(key="delivery-without-job", job_id=None))

    async with svc.sessions() as session, session.begin():
        await repo.update_job(
            session, jobs[2].id, state="failed", error="it broke", steps=[{"step": "plan"}]
        )

    async with svc.sessions() as session:
        listed = [j.id for j in await repo.list_jobs(session)]
        failed = await repo.jobs_in_state(session, "failed")
        by_key = await repo.job_for_key(session, "delivery-1")
        assert await repo.job_for_key(session, "delivery-without-job") is None
        assert await repo.job_for_key(session, "never-seen") is None
    assert listed == [jobs[2].id, jobs[1].id, jobs[0].id]
    assert [(j.id, j.error, j.steps) for j in failed] == [
        (jobs[2].id, "it broke", [{"step": "plan"}])
    ]
    assert by_key is not None and by_key.id == jobs[1].id and by_key.environment == "env1"


async def test_a_job_is_claimed_once_and_only_its_worker_renews_the_lease(svc: Services) -> None:
    job = _job()
    async with svc.sessions() as session, session.begin():
        session.add(job)
    lease = datetime(2030, 1, 1, tzinfo=UTC)

    async with svc.sessions() as session, session.begin():
        assert await repo.claim_job(session, job_id=job.id, worker="a", lease_until=lease)
        assert not await repo.claim_job(session, job_id=job.id, worker="b", lease_until=lease)
        later = lease + timedelta(minutes=1)
        await repo.renew_lease(session, job_id=job.id, worker="b", lease_until=later)
        await repo.renew_lease(session, job_id=job.id, worker="a", lease_until=later)

    async with svc.sessions() as session:
        found = await repo.get_job(session, job.id)
    assert found is not None
    assert (found.state, found.claimed_by, found.lease_until) == ("running", "a", later)
    assert found.started_at is not None


async def test_an_idempotency_key_is_used_once(svc: Services) -> None:
    job = _job()
    async with svc.sessions() as session, session.begin():
        session.add(job)
    async with svc.sessions() as session, session.begin():
        session.add(IdempotencyKey(key="delivery-1", job_id=job.id))
    async with svc.sessions() as session:
        session.add(IdempotencyKey(key="delivery-1", job_id=None))
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_audit_entries_outlive_their_environment(svc: Services) -> None:
    async with svc.sessions() as session, session.begin():
        session.add(EnvironmentRecord(name="shop", owner="UOWNER1"))
        repo.record_audit(
            session,
            actor="UOWNER1",
            action="delete",
            environment="shop",
            channel=None,
            allowed=True,
        )
    async with svc.sessions() as session, session.begin():
        await repo.delete_environment(session, "shop")
    async with svc.sessions() as session:
        assert [e.action for e in await repo.list_audit(session, environment="shop")] == ["delete"]
        assert await _count(session, AuditEntry) == 1


async def test_on_sqlite_waiting_for_another_process_s_write_lock_holds_up_nothing_else(
    tmp_path: Path,
) -> None:
    """Statements run in the event loop, but a wait for another process's write lock (a
    command run beside ``serve``) does not: the loop goes on, and the write lands after."""
    path = tmp_path / "busy.db"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade(url)
    other = sqlite3.connect(path, isolation_level=None)  # as another process would hold it
    other.execute("PRAGMA journal_mode=WAL")  # as clonebot's first connection left it
    other.execute("BEGIN IMMEDIATE")
    engine = create_engine(url)
    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(ticking())
    asyncio.get_running_loop().call_later(0.5, other.execute, "COMMIT")
    try:
        began = time.monotonic()
        async with sessionmaker(engine)() as session:
            session.add(EnvironmentRecord(name="waited"))
            await session.commit()
        waited = time.monotonic() - began
        ticked = ticks
        # again: the connection did not keep the wait's busy timeout (the loop would block on
        # the lock, and the COMMIT that ends it waits for the loop)
        other.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
        async with sessionmaker(engine)() as session:
            session.add(EnvironmentRecord(name="again"))
            await session.commit()
            names = {r.name for r in await repo.list_environments(session)}
    finally:
        ticker.cancel()
        other.close()
        await engine.dispose()
    assert names == {"waited", "again"}
    assert waited >= 0.45
    assert ticked >= 25  # 10 ms apart: the loop ran all through the wait
    assert ticks - ticked >= 15


async def test_on_sqlite_a_read_then_write_waits_for_a_racing_writer(tmp_path: Path) -> None:
    """Two deliveries of one Slack request: each reads, then writes. On SQLite the one that
    read first must not fail with "database is locked" when the other commits in between."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'race.db'}"
    await upgrade(url)
    engine = create_engine(url)
    sessions = sessionmaker(engine)
    try:

        async def second_writes() -> None:
            async with sessions() as second:
                second.add(EnvironmentRecord(name="second"))
                await second.commit()

        # a savepoint (ensure_record's) makes SQLite itself open the transaction
        async with sessions() as first, first.begin(), first.begin_nested():
            await first.scalars(select(EnvironmentRecord))
            racing = asyncio.create_task(second_writes())
            await asyncio.sleep(0.3)  # time for the second to commit, were it not held back
            first.add(EnvironmentRecord(name="first"))
        await racing
        async with sessions() as session:
            names = {r.name for r in await repo.list_environments(session)}
        assert names == {"first", "second"}
    finally:
        await engine.dispose()


async def test_several_processes_starting_on_a_new_database_all_migrate_it(
    database_url: str,
) -> None:
    """Five `clonebot` processes started at once on a database nobody created the schema of
    (a new SQLite file, a new PostgreSQL database): each must start, and the schema is whole."""
    env = {**os.environ, "DATABASE_URL": database_url}
    pipe, merged = asyncio.subprocess.PIPE, asyncio.subprocess.STDOUT
    args = [sys.executable, "-m", "bot", "db", "upgrade"]
    procs = [
        await asyncio.create_subprocess_exec(*args, stdout=pipe, stderr=merged, env=env)
        for _ in range(5)
    ]
    async with asyncio.timeout(120):
        outputs = [(await p.communicate())[0].decode() for p in procs]
    failed = [out[-800:] for p, out in zip(procs, outputs, strict=True) if p.returncode != 0]
    assert failed == [], failed
    engine = create_engine(database_url)
    try:
        async with sessionmaker(engine)() as session:
            assert await _table_names(session) == TABLES
            query = text("SELECT version_num FROM alembic_version")
            versions = (await session.execute(query)).all()
        head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
        assert [v for (v,) in versions] == [head]
    finally:
        await engine.dispose()

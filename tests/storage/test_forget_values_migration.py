"""Migration 0004: job results written before rewrites lost their values keep none."""

from __future__ import annotations

import asyncio
import secrets

import sqlalchemy as sa
from alembic import command

from storage.db import alembic_config, create_engine, sessionmaker, upgrade
from storage.models import Job, utcnow

SECRET = "s3cr3t-" + secrets.token_hex(4)


async def test_upgrading_removes_rewritten_values_from_old_job_results(database_url: str) -> None:
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), "0003")
    old = {
        "node": "dev_db_1",
        "variable": "DATABASE_URL",
        "old": f"postgres://app:{SECRET}@prod_db_1/app",
        "new": f"postgres://app:{SECRET}@dev_db_1/app",
    }
    job_id = secrets.token_hex(6)
    # the jobs table as 0003 left it (the model has columns of later migrations)
    jobs = sa.table(
        "jobs", *(sa.column(c) for c in ("id", "kind", "state", "environment", "source")),
        *(sa.column(c) for c in ("requester", "created_at")),
        *(sa.column(c, sa.JSON) for c in ("params", "steps", "frozen", "result")),
    )  # fmt: skip
    row = {
        "id": job_id, "kind": "clone", "state": "succeeded", "environment": "dev",
        "source": "prod", "requester": "UOWNER1", "params": {}, "steps": [], "frozen": [],
        "result": {"freeze_ms": 12, "rewrites": [old], "ports": []}, "created_at": utcnow(),
    }  # fmt: skip
    engine = create_engine(database_url)
    try:
        async with sessionmaker(engine)() as session:
            await session.execute(jobs.insert().values(**row))
            await session.commit()

        await upgrade(database_url)

        async with sessionmaker(engine)() as session:
            kept = await session.get(Job, job_id)
        assert kept is not None and kept.result is not None
        assert SECRET not in repr(kept.result)
        assert kept.result == {
            "freeze_ms": 12,
            "rewrites": [{"node": "dev_db_1", "variable": "DATABASE_URL"}],
            "ports": [],
        }
    finally:
        await engine.dispose()

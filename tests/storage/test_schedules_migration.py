"""Migration 0006: the refresh schedules' table, its cascade from environments, and back."""

from __future__ import annotations

import asyncio

from alembic import command
from sqlalchemy import inspect, text

from storage.db import alembic_config, create_engine


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_0006_adds_the_schedules_cascading_from_environments_and_goes_back(
    database_url: str,
) -> None:
    config = alembic_config(database_url)
    await asyncio.to_thread(command.upgrade, config, "0006")
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("INSERT INTO environments (id, name, state, created_at, expiry_stage) "
                     "VALUES (7, 'dev', 'ready', CURRENT_TIMESTAMP, 0)")
            )  # fmt: skip
            await connection.execute(
                text("INSERT INTO refresh_schedules (environment_id, cron, timezone, set_by, "
                     "next_run, created_at) VALUES (7, '0 3 * * *', 'UTC', 'UOWNER1', "
                     "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")
            )  # fmt: skip
            await connection.execute(text("DELETE FROM environments WHERE id = 7"))
            left = await connection.scalar(text("SELECT count(*) FROM refresh_schedules"))
        assert left == 0, "a schedule goes with its environment"
    finally:
        await engine.dispose()

    await asyncio.to_thread(command.downgrade, config, "0005")
    assert "refresh_schedules" not in await _tables(database_url)
    await asyncio.to_thread(command.upgrade, config, "0006")
    assert "refresh_schedules" in await _tables(database_url)

"""Engines, sessions and schema migrations (Alembic) for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

MIGRATIONS = Path(__file__).parent / "migrations"


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers see the last commit while a writer works; foreign keys are off by
    # default in SQLite.
    # In WAL mode synchronous=NORMAL syncs at checkpoints, not at every commit: a commit
    # survives a crash of clonebot (never a corrupt file), though the last ones may not
    # survive a power cut; a swap is not held up by a disk flush.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # transactions are begun by _sqlite_begin, not by the driver
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]


def _sqlite_begin(connection: Connection) -> None:
    # A transaction that reads, then writes, after another connection wrote in between fails
    # at once with "database is locked" (SQLite cannot move its snapshot forward): two
    # deliveries of one Slack request racing did, under load. BEGIN IMMEDIATE takes the write
    # lock first: the other waits (up to the 30 s timeout), then sees the first one's rows.
    # Transactions here are short, so holding the lock from the start costs little.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def upgrade(url: str) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            await asyncio.to_thread(Path(path).parent.mkdir, parents=True, exist_ok=True)
    # Alembic's async env.py runs its own event loop: give it a thread of its own
    await asyncio.to_thread(command.upgrade, alembic_config(url), "head")


__all__ = ["AsyncSession", "Engine", "create_engine", "sessionmaker", "upgrade"]

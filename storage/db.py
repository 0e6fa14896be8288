"""Engines, sessions and schema migrations (Alembic) for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_S = 30  # how long a statement waits for another process's write lock
T = TypeVar("T")


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        database = make_url(url).database or ":memory:"
        engine = create_async_engine(url, async_creator=partial(_connect, database))
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(url, pool_pre_ping=True)


class LoopConnection(aiosqlite.Connection):
    """aiosqlite's connection, whose statements run in the event loop's own thread.

    aiosqlite hands each call to a thread of its own and back: under load, each hand-off
    waits for a CPU. A swap's five statements made sixteen of them: 4 ms of CPU and a p99 of
    38 ms on a busy machine. Here a statement takes tens of microseconds (small tables, WAL,
    no flush at commit), and only a wait for another process's write lock (BEGIN IMMEDIATE
    while a command beside ``serve`` writes) goes to the thread, where the loop does not
    wait with it. Opening and closing stay in the thread.
    """

    async def _execute(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        try:
            return fn(*args, **kwargs)  # the connection's busy timeout is 0: never waits
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
        # SQLITE_BUSY: nothing was done; wait for the lock in the thread, as aiosqlite does
        db = self._connection
        await self._in_thread(partial(db.execute, f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}"))
        try:
            return await self._in_thread(partial(fn, *args, **kwargs))
        finally:
            await self._in_thread(partial(db.execute, "PRAGMA busy_timeout=0"))

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return cast(T, await super()._execute(fn))  # type: ignore[no-untyped-call]


async def _connect(database: str) -> LoopConnection:
    # check_same_thread off: opened in aiosqlite's thread, used in the loop's (one at a time)
    connector = partial(sqlite3.connect, database, timeout=0, check_same_thread=False)
    connection = LoopConnection(connector, iter_chunk_size=64)
    connection._thread.daemon = True  # as SQLAlchemy does with aiosqlite's own
    await connection
    return connection


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

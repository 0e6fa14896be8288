"""Engines, sessions and schema migrations (Alembic) for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
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
log = logging.getLogger(__name__)
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
    no flush at commit). What may wait goes to the thread, and the loop does not wait with
    it: opening and closing (closing the last connection checkpoints), a statement that meets
    another process's write lock (BEGIN IMMEDIATE while a command beside ``serve`` writes),
    and the WAL checkpoint, every ``CHECKPOINT_EVERY`` commits (automatic checkpoints are off:
    one would flush the disk inside a commit, in the loop). While a call is in the thread,
    the next ones follow it there: the sqlite3 connection is never used by both at once.
    """

    CHECKPOINT_EVERY = 100

    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._thread.daemon = True  # as SQLAlchemy does with aiosqlite's own
        self._in_flight = 0  # calls sent to the thread and not finished: only the loop counts
        self._commits = 0

    async def _execute(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        db, call = self._connection, partial(fn, *args, **kwargs)
        if self._in_flight or fn == db.close:
            return await self._in_thread(call)
        try:
            result = call()  # the connection's busy timeout is 0: this never waits
        except sqlite3.OperationalError as exc:
            # SQLITE_BUSY or an extended code of it: nothing was done; wait in the thread
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            return await self._in_thread(partial(_waiting, db, call))
        if fn == db.commit:
            self._commits += 1
            if self._commits % self.CHECKPOINT_EVERY == 0:
                await self._in_thread(partial(_checkpoint, db))
        return result

    async def _in_thread(self, call: Callable[[], T]) -> T:
        self._in_flight += 1
        future = asyncio.ensure_future(super()._execute(call))  # type: ignore[no-untyped-call]
        # counted until the thread is done with it, even if whoever waits is cancelled
        future.add_done_callback(self._landed)
        return cast(T, await asyncio.shield(future))

    def _landed(self, _future: asyncio.Future[Any]) -> None:
        self._in_flight -= 1


def _waiting(db: sqlite3.Connection, call: Callable[[], T]) -> T:
    """``call`` waiting up to ``BUSY_TIMEOUT_S`` for another process's lock (in the thread)."""
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    try:
        return call()
    finally:
        db.execute("PRAGMA busy_timeout=0")


def _checkpoint(db: sqlite3.Connection) -> None:
    """Copy the WAL into the database, as far as no reader holds it back; never fails the
    commit it follows (in the thread)."""
    try:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as exc:
        log.warning("SQLite checkpoint skipped: %s", exc)


def _open(database: str) -> sqlite3.Connection:
    # check_same_thread off: opened in aiosqlite's thread, used in the loop's (one at a time)
    db = sqlite3.connect(database, timeout=0, check_same_thread=False)
    db.execute("PRAGMA wal_autocheckpoint=0")  # LoopConnection checkpoints, in the thread
    return db


async def _connect(database: str) -> LoopConnection:
    connection = LoopConnection(partial(_open, database))
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

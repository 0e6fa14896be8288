"""Alembic environment: runs migrations over the async engine for the configured URL."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import async_engine_from_config

from storage.models import Base

config = context.config
target_metadata = Base.metadata


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


# any fixed number: the PostgreSQL advisory lock every clonebot process migrates under
_MIGRATION_LOCK = 0x636C6F6E65626F74  # "clonebot"


async def run_async_migrations() -> None:
    connectable = async_engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    async with connectable.connect() as connection:
        if connection.dialect.name == "postgresql":
            # several processes starting on a new database would each create the tables:
            # one migrates, the others wait and then find the schema at its head. The
            # lock is the session's: it outlives this commit and goes with the connection.
            await connection.execute(
                text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK}
            )
            await connection.commit()
        await connection.run_sync(do_run_migrations)
    await connectable.dispose()


@contextlib.contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    """On SQLite, an exclusive lock on a file beside the database while migrating.

    Two processes creating the schema of a new file at once raced ("table already exists"):
    SQLite has no advisory lock, so a ``flock`` on ``<database>-migrate.lock`` stands in.
    """
    database = make_url(url).database
    if not url.startswith("sqlite") or not database or database == ":memory:":
        yield
        return
    lock = Path(f"{database}-migrate.lock")
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `clonebot db upgrade`")
with _sqlite_file_lock(config.get_main_option("sqlalchemy.url") or ""):
    asyncio.run(run_async_migrations())

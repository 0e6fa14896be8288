"""The services a front door opens once: settings, the Docker engines, the database."""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from services.docker import DockerClient
from services.fleet import LOCAL, EngineSpec, Fleet
from services.settings import Settings
from storage.db import AsyncSession, create_engine, sessionmaker, upgrade
from storage.models import EngineRecord


@dataclass
class Services:
    settings: Settings
    docker: DockerClient  # the engine of ``engine``
    sessions: async_sessionmaker[AsyncSession]
    fleet: Fleet
    engine: str = LOCAL

    def on(self, engine: str) -> Services:
        """The same services, with ``docker`` the client of ``engine``."""
        if engine == self.engine:
            return self
        return dataclasses.replace(self, docker=self.fleet.client(engine), engine=engine)


@asynccontextmanager
async def open_services(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Services]:
    """Connect to Docker and the database (bringing its schema up to date first)."""
    if migrate:
        await upgrade(settings.database_url)
    engine = create_engine(settings.database_url)
    fleet = Fleet(settings.engine_specs())
    try:
        async with DockerClient(settings.docker_host) as docker:
            fleet.adopt(LOCAL, docker)
            sessions = sessionmaker(engine)
            await load_added_engines(fleet, sessions)
            # what exists now (modules, SQLAlchemy's mappers, the engine) lives as long as
            # the process: a full garbage collection need not walk it again. Measured: a
            # gen-2 collection over it held a swap up for 75 ms (python -m bench routing).
            gc.freeze()
            yield Services(settings=settings, docker=docker, sessions=sessions, fleet=fleet)
    finally:
        await fleet.close()
        await engine.dispose()


async def load_added_engines(fleet: Fleet, sessions: async_sessionmaker[AsyncSession]) -> None:
    """The engines added with ``clonebot engine add``, as the database has them now."""
    async with sessions() as session:
        rows = (await session.scalars(select(EngineRecord))).all()
    specs = [
        EngineSpec(r.name, r.url, Path(r.keys_dir) if r.keys_dir else None, origin="added")
        for r in rows
    ]
    await fleet.replace_added(specs)


RELOAD_S = 5.0  # how stale the added engines may be in a long-lived process (serve)


async def refresh_engines(svc: Services) -> None:
    """The engines added with ``clonebot engine add`` (by another process, say), read again
    if they were read more than ``RELOAD_S`` ago: one query, at most that often."""
    if time.monotonic() - svc.fleet.loaded_at >= RELOAD_S:
        await load_added_engines(svc.fleet, svc.sessions)

"""Engines added and removed by admins, and how each one answers."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select

from services import access
from services.access import Request
from services.context import Services, load_added_engines
from services.environments import PROJECT
from services.errors import BadRequest, ClonebotError, Forbidden
from services.fleet import ANSWER_S, LOCAL, EngineSpec, check_engine
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import UNFINISHED, EngineRecord, EnvironmentRecord, Job


@dataclass(frozen=True)
class EngineStatus:
    spec: EngineSpec
    engine_id: str | None  # None: it did not answer
    detail: str  # its Docker version and host name, or why it did not answer
    environments: int  # Compose projects on it (recorded ones, when it does not answer)

    @property
    def answers(self) -> bool:
        return self.engine_id is not None


async def engine_statuses(svc: Services) -> list[EngineStatus]:
    """Every engine, ``local`` first, asked at once how it is."""
    await load_added_engines(svc.fleet, svc.sessions)
    async with svc.sessions() as session:
        recorded = Counter((await session.scalars(select(EnvironmentRecord.engine))).all())
    names = svc.fleet.names
    found = await asyncio.gather(*(_status(svc, n, recorded[n]) for n in names))
    return list(found)


async def _status(svc: Services, name: str, recorded: int) -> EngineStatus:
    spec = svc.fleet.spec(name)
    try:
        docker = svc.fleet.client(name)
        async with asyncio.timeout(ANSWER_S):
            info = await docker.info()
            projects = {
                (c.get("Labels") or {}).get(PROJECT)
                for c in await docker.list_containers(labels=[PROJECT])
            }
    except TimeoutError:
        return EngineStatus(spec, None, f"no answer in {ANSWER_S:.0f} s", recorded)
    except ClonebotError as exc:
        return EngineStatus(spec, None, exc.message, recorded)
    detail = f"Docker {info.get('ServerVersion', '?')} on {info.get('Name', '?')}"
    return EngineStatus(spec, str(info.get("ID", "")), detail, len(projects))


async def _check_admin(svc: Services, request: Request, action: str, name: str) -> None:
    """Only admins change the engines; a refusal is audited too."""
    access.check_user(request.user)
    if request.user in svc.settings.admins:
        return
    reason = f"only an admin (CLONEBOT_ADMINS) may {action.replace('engine ', '')} an engine"
    async with svc.sessions() as session:
        _audit(session, request, action, name, {}, refused=reason)
        await session.commit()
    raise Forbidden(reason)


async def add_engine(
    svc: Services, request: Request, *, name: str, url: str, keys_dir: Path | None
) -> EngineStatus:
    """Add an engine that answers and is not one clonebot has already, under a free name."""
    await _check_admin(svc, request, "engine add", name)
    spec = check_engine(name, url, keys_dir)
    await load_added_engines(svc.fleet, svc.sessions)
    if name in svc.fleet.names:
        raise BadRequest(f"there is an engine named {name} already")
    engine_id = await _engine_id(spec)
    async with svc.sessions() as session:  # an added engine away now is known by its ID
        known = {r.engine_id: r.name for r in (await session.scalars(select(EngineRecord))).all()}
    for other in await engine_statuses(svc):
        if other.engine_id is not None:
            known[other.engine_id] = other.spec.name
    if engine_id in known:
        raise BadRequest(f"{url} is engine {known[engine_id]}, which clonebot has already")
    async with svc.sessions() as session:
        session.add(
            EngineRecord(
                name=name, url=url, keys_dir=str(spec.keys_dir) if spec.keys_dir else None,
                engine_id=engine_id, added_by=request.user,
            )
        )  # fmt: skip
        _audit(session, request, "engine add", name, {"url": url})
        await session.commit()
    await load_added_engines(svc.fleet, svc.sessions)
    return await _status(svc, name, 0)


async def _engine_id(spec: EngineSpec) -> str:
    docker = spec.connect()
    try:
        async with asyncio.timeout(ANSWER_S):
            info = await docker.info()
    except TimeoutError:
        raise BadRequest(f"{spec.url} does not answer in {ANSWER_S:.0f} s") from None
    except ClonebotError as exc:
        raise BadRequest(f"{spec.url} does not answer as a Docker engine: {exc.message}") from None
    finally:
        await docker.close()
    return str(info.get("ID", ""))


async def remove_engine(svc: Services, request: Request, *, name: str) -> None:
    """Stop using an added engine. Refused while an environment clonebot records, or a job
    not finished, is on it: what it holds is left as it is, never removed."""
    await _check_admin(svc, request, "engine remove", name)
    async with svc.sessions() as session:
        row = await session.get(EngineRecord, name)
        if row is None:
            if name == LOCAL or name in svc.fleet.names:
                setting = "DOCKER_HOST" if name == LOCAL else "CLONEBOT_ENGINES"
                raise BadRequest(f"engine {name} comes from {setting}: remove it there")
            raise BadRequest(f"no engine named {name!r} was added")
        query = select(EnvironmentRecord.name).where(EnvironmentRecord.engine == name)
        if held := sorted((await session.scalars(query)).all()):
            raise BadRequest(
                f"engine {name} holds {', '.join(held)}: delete them (or `forget` those that "
                "are down) first"
            )
        jobs = select(Job.id).where(
            Job.state.in_(UNFINISHED), or_(Job.engine == name, Job.source_engine == name)
        )
        if busy := (await session.scalars(jobs)).all():
            raise BadRequest(f"engine {name} is in use by job {busy[0]}: wait for it to end")
        await session.delete(row)
        _audit(session, request, "engine remove", name, {"url": row.url})
        await session.commit()
    await load_added_engines(svc.fleet, svc.sessions)


def _audit(
    session: AsyncSession,
    request: Request,
    action: str,
    name: str,
    more: dict[str, str],
    *,
    refused: str = "",
) -> None:
    repo.record_audit(
        session, actor=request.user, action=action, environment=None, channel=request.channel,
        allowed=not refused, reason=refused, detail={"engine": name, **more},
    )  # fmt: skip

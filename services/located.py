"""Environments across the fleet: each found on the engine that holds it.

With one engine (the usual case) every call here is the single-engine call it wraps. With
more, the engines are asked at once, each within ``ANSWER_S``: one that does not answer
leaves the others' answers whole, and is named, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from services.context import Services
from services.docker import DockerClient, gather_all
from services.environments import (
    PROJECT,
    Environment,
    Glimpse,
    get_environment,
    glimpses_in,
    list_environments,
)
from services.errors import BadRequest, ClonebotError, DockerUnavailable, EnvironmentNotFound
from services.fleet import ANSWER_S, EngineUnreachable
from services.naming import check_name_free
from services.swarm import get_stack, list_stacks, same_stacks
from storage import repositories as repo
from storage.db import AsyncSession

T = TypeVar("T")


@dataclass(frozen=True)
class FleetView:
    """Every environment on the engines that answered, and why the others did not."""

    environments: list[Environment]
    unreachable: dict[str, str] = field(default_factory=dict)  # engine: why


async def on_each(
    svc: Services, call: Callable[[Services], Awaitable[T]], *, wait: float | None = ANSWER_S
) -> tuple[dict[str, T], dict[str, str]]:
    """``call`` on every engine at once: what each returned, and why the others failed."""
    names = svc.fleet.names

    async def one(name: str) -> T:
        async with asyncio.timeout(wait):
            return await call(svc.on(name))

    results = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
    done: dict[str, T] = {}
    failed: dict[str, str] = {}
    for name, result in zip(names, results, strict=True):
        if isinstance(result, TimeoutError):
            failed[name] = f"no answer in {wait:.0f} s"
        elif isinstance(result, ClonebotError):
            failed[name] = result.message
        elif isinstance(result, BaseException):
            raise result
        else:
            done[name] = result
    return done, failed


async def fleet_environments(svc: Services) -> FleetView:
    """Every Compose project and Swarm stack on every engine that answers, by name, each
    with its engine."""
    if svc.fleet.single:
        return FleetView(await _environments(svc.docker))
    found, failed = await on_each(svc, lambda s: _environments(s.docker))
    envs = [replace(e, engine=name) for name, listed in found.items() for e in listed]
    envs = same_stacks(sorted(envs, key=lambda e: (e.name, svc.fleet.names.index(e.engine))))
    return FleetView(envs, failed)


async def _environments(docker: DockerClient) -> list[Environment]:
    """The engine's Compose projects, and its Swarm's stacks if it is a manager."""
    projects, stacks = await gather_all(list_environments(docker), list_stacks(docker))
    return sorted([*projects, *stacks], key=lambda e: e.name)


async def _environment(docker: DockerClient, name: str) -> Environment:
    """The Compose project ``name``, else the Swarm stack, else EnvironmentNotFound."""
    try:
        return await get_environment(docker, name)
    except EnvironmentNotFound:
        if (stack := await get_stack(docker, name)) is not None:
            return stack
        raise


async def find_environment(
    svc: Services, name: str, *, session: AsyncSession | None = None
) -> Environment:
    """The environment named ``name``, on whichever engine holds it.

    ``EnvironmentNotFound`` when no engine that answers has it; ``EngineUnreachable`` when
    its record places it on an engine that does not answer."""
    if svc.fleet.single:
        return await _environment(svc.docker, name)

    async def look(s: Services) -> Environment | None:
        try:
            return replace(await _environment(s.docker, name), engine=s.engine)
        except EnvironmentNotFound:
            return None

    found, failed = await on_each(svc, look)
    held = same_stacks([env for n in svc.fleet.names if (env := found.get(n)) is not None])
    if len(held) > 1:
        engines = " and ".join(e.engine for e in held)
        raise BadRequest(f"{name} is on engines {engines}: rename one of them first")
    if held:
        return held[0]
    # in the caller's session when it has one: a second one would wait for its lock
    if session is not None:
        record = await repo.get_environment(session, name)
    else:
        async with svc.sessions() as own:
            record = await repo.get_environment(own, name)
    if record is not None and record.engine in failed:
        raise EngineUnreachable(record.engine, failed[record.engine])
    raise EnvironmentNotFound(name)


async def find_glimpses(
    svc: Services, names: Sequence[str], *, session: AsyncSession | None = None
) -> list[Glimpse]:
    """``glimpses_in`` across the engines (a swap's two may be on two): one
    container listing of each engine, none inspected. A name that is no Compose project there
    (a Swarm stack, or one on an engine away) is found the slow way, or said why not."""
    if svc.fleet.single:
        listed = {svc.engine: await svc.docker.list_containers(labels=[PROJECT])}
    else:
        listed, _ = await on_each(svc, lambda s: s.docker.list_containers(labels=[PROJECT]))
    try:
        return glimpses_in(listed, names)
    except EnvironmentNotFound:
        pass
    found = [await find_environment(svc, name, session=session) for name in names]
    return [
        Glimpse(e.name, e.owner, e.cloned_from, e.web_layer is not None, e.engine) for e in found
    ]


async def check_name_free_everywhere(
    svc: Services, *, name: str, renaming: str | None = None
) -> None:
    """``check_name_free`` on every engine that answers: a name is unique in the fleet. An
    engine away is passed over: the records keep clonebot's own names there."""
    if svc.fleet.single:
        await check_name_free(svc.docker, name=name, renaming=renaming)
        return

    async def one(s: Services) -> None:
        with contextlib.suppress(TimeoutError, DockerUnavailable):
            async with asyncio.timeout(ANSWER_S):
                await check_name_free(s.docker, name=name, renaming=renaming)

    await gather_all(*(one(svc.on(n)) for n in svc.fleet.names))

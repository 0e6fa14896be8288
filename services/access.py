"""Ownership as the database records it, and the permission check applied to it, audited."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload

from services.context import Services
from services.environments import Environment, Glimpse
from services.errors import BadRequest, EnvironmentNotFound, Forbidden, InvalidUser, Refused
from services.located import find_environment, find_glimpses
from services.permissions import Access, Action, Decision, Role, decide
from services.settings import SLACK_USER, Settings
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import EnvironmentRecord


def check_user(user: str) -> str:
    if not SLACK_USER.fullmatch(user):
        raise InvalidUser(user)
    return user


def label_owner(env: Environment | Glimpse) -> str | None:
    """The owner an environment's ``clonebot.owner`` label names, if it names a Slack user."""
    return env.owner if env.owner and SLACK_USER.fullmatch(env.owner) else None


async def ensure_record(session: AsyncSession, env: Environment | Glimpse) -> EnvironmentRecord:
    """The environment's record; a newly seen one is owned by its ``clonebot.owner`` label."""
    record = await repo.get_environment(session, env.name)
    engine = env.engine
    if record is not None:
        if record.engine != engine:  # Docker says where it is now
            record.engine = engine
        return record
    record = EnvironmentRecord(
        name=env.name, owner=label_owner(env), cloned_from=env.cloned_from, collaborators=[],
        channels=[], engine=engine,
    )  # fmt: skip
    try:
        async with session.begin_nested():
            session.add(record)
    except IntegrityError:  # another process recorded it first
        found = await repo.get_environment(session, env.name)
        assert found is not None
        return found
    return record


def access_of(record: EnvironmentRecord) -> Access:
    return Access(
        name=record.name,
        owner=record.owner,
        collaborators={c.user: Role(c.role) for c in record.collaborators},
        channels=frozenset(b.channel for b in record.channels),
    )


@dataclass(frozen=True)
class Request:
    """Who asks, from where, and the delivery key that makes a retry harmless."""

    user: str
    channel: str | None = None
    key: str | None = None
    # the approval a change to a protected environment is made with (services.approvals)
    approval: str | None = None


async def check_request(
    svc: Services, session: AsyncSession, request: Request, *, name: str, action: Action
) -> tuple[Environment, EnvironmentRecord]:
    """The environment and its record, if ``request`` may do ``action`` to it; else raise."""
    check_user(request.user)
    env = await find_environment(svc, name, session=session)
    if env.kind == "stack" and action not in STACK_ACTIONS:
        raise BadRequest(
            f"{name} is a Swarm stack: {action.value} is not built for stacks yet (they are "
            "listed, cloned, refreshed, routed, stopped, started and deleted)"
        )
    return env, await _checked_record(svc, session, request, env, action)


# what a Swarm stack takes (services/swarm.py); the rest needs its tasks' containers
STACK_ACTIONS = frozenset(
    {Action.VIEW, Action.CLONE, Action.DELETE, Action.SHARE, Action.HAND_OVER,
     Action.BIND_CHANNEL, Action.NOTIFY, Action.EXTEND, Action.MOVE_TRAFFIC, Action.SLEEP,
     Action.REFRESH}
)  # fmt: skip


async def check_recorded(
    svc: Services, session: AsyncSession, request: Request, *, name: str, action: Action
) -> tuple[Environment | None, EnvironmentRecord]:
    """As ``check_request``, for an environment that may be down: recorded, with no container
    (``docker compose down``). Its record keeps its owner, people and channels, and decides;
    the environment is then None."""
    try:
        return await check_request(svc, session, request, name=name, action=action)
    except EnvironmentNotFound:
        record = await repo.get_environment(session, name)
        if record is None or record.state != "ready":
            raise
    await authorize(
        session, svc.settings, user=request.user, action=action, record=record,
        channel=request.channel,
    )  # fmt: skip
    return None, record


async def check_glimpses(
    svc: Services, session: AsyncSession, request: Request, *, names: Sequence[str], action: Action
) -> list[tuple[Glimpse, EnvironmentRecord]]:
    """As ``check_request``, for each of ``names``, from one container listing and one query:
    for changes that must be quick (a swap)."""
    check_user(request.user)
    envs = await find_glimpses(svc, names, session=session)
    query = select(EnvironmentRecord).where(EnvironmentRecord.name.in_(names))
    known = {r.name: r for r in (await session.scalars(query)).all()}
    records = [known.get(env.name) or await ensure_record(session, env) for env in envs]
    if len(known) < len(envs):
        await session.commit()
    for record in records:
        await authorize(
            session, svc.settings, user=request.user, action=action, record=record,
            channel=request.channel,
        )  # fmt: skip
    return list(zip(envs, records, strict=True))


# Built once: building a statement costs more CPU than SQLite takes to run it (its cache key),
# and a swap waits for that CPU under load.
_RECORDS_WITH_PEOPLE = (
    select(EnvironmentRecord)
    .where(EnvironmentRecord.name.in_(bindparam("names", expanding=True)))
    .options(joinedload(EnvironmentRecord.collaborators), joinedload(EnvironmentRecord.channels))
)


async def check_records(
    svc: Services, session: AsyncSession, request: Request, *, names: Sequence[str], action: Action
) -> list[EnvironmentRecord] | None:
    """As ``check_glimpses``, from one query and no Docker read, for environments known to
    exist (the router serves them); None when one of them has no record yet."""
    check_user(request.user)
    found = await session.scalars(_RECORDS_WITH_PEOPLE, {"names": list(names)})
    known = {r.name: r for r in found.unique().all()}
    # one not recorded, or not ready (being made, or gone): looked up in Docker instead
    if not known.keys() >= set(names) or any(known[n].state != "ready" for n in names):
        return None
    for name in names:
        await authorize(
            session, svc.settings, user=request.user, action=action, record=known[name],
            channel=request.channel,
        )  # fmt: skip
    return [known[name] for name in names]


async def _checked_record(
    svc: Services,
    session: AsyncSession,
    request: Request,
    env: Environment | Glimpse,
    action: Action,
) -> EnvironmentRecord:
    record = await ensure_record(session, env)
    await session.commit()
    await authorize(
        session,
        svc.settings,
        user=request.user,
        action=action,
        record=record,
        channel=request.channel,
    )
    return record


@asynccontextmanager
async def audited_refusals(
    session: AsyncSession, request: Request, *, action: Action, environment: str
) -> AsyncIterator[None]:
    """A refusal raised in the block (a quota, a forbidden ``never``) is written to the audit
    log, as the permission check's are, then raised."""
    try:
        yield
    except Refused as exc:
        await session.rollback()
        repo.record_audit(
            session, actor=request.user, action=action.value, environment=environment,
            channel=request.channel, allowed=False, reason=exc.message,
        )  # fmt: skip
        await session.commit()
        raise


async def authorize(
    session: AsyncSession,
    settings: Settings,
    *,
    user: str,
    action: Action,
    record: EnvironmentRecord,
    channel: str | None,
) -> Decision:
    """Allow, or audit the refusal and raise ``Forbidden`` with its reason."""
    decision = decide(
        user=user, action=action, access=access_of(record), channel=channel, admins=settings.admins
    )
    if not decision.allowed:
        repo.record_audit(
            session,
            actor=user,
            action=action.value,
            environment=record.name,
            channel=channel,
            allowed=False,
            reason=decision.reason,
        )
        await session.commit()
        raise Forbidden(decision.reason)
    return decision

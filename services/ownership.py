"""Adopting, sharing, handing over and forgetting environments; each change checked and
audited."""

from __future__ import annotations

from services import access
from services.access import Request
from services.approvals import Change, ChangeKind, require
from services.context import Services
from services.environments import environment_exists
from services.errors import BadRequest, EnvironmentNotFound, Forbidden
from services.job_locks import JobKind, check_not_busy, serialize
from services.naming import held_names
from services.permissions import Access, Action, Role, decide
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import EnvironmentRecord, Job


async def adopt_environment(svc: Services, request: Request, *, name: str, owner: str) -> None:
    """An admin gives an unowned environment its first owner."""
    access.check_user(owner)
    async with svc.sessions() as session:
        record = await _checked(svc, session, request, name=name, action=Action.ADOPT)
        if record.owner is not None:
            raise BadRequest(
                f"{name} is already owned by {record.owner}; use `owner` to hand it over"
            )
        record.owner = owner
        _audit(session, request, Action.ADOPT, name, detail={"owner": owner})
        await session.commit()


async def share_environment(
    svc: Services, request: Request, *, name: str, user: str, role: str
) -> None:
    access.check_user(user)
    if role not in {r.value for r in Role}:
        raise BadRequest(f"unknown role {role!r}: use viewer or operator")
    async with svc.sessions() as session:
        record = await _checked(svc, session, request, name=name, action=Action.SHARE)
        if user == record.owner:
            raise BadRequest(f"{user} owns {name} already")
        repo.set_collaborator(record, user=user, role=role)
        _audit(session, request, Action.SHARE, name, detail={"user": user, "role": role})
        await session.commit()


async def hand_over_environment(
    svc: Services, request: Request, *, name: str, new_owner: str
) -> str | None:
    """Make ``new_owner`` the owner; the previous owner is returned."""
    access.check_user(new_owner)
    async with svc.sessions() as session:
        record = await _checked(svc, session, request, name=name, action=Action.HAND_OVER)
        args = {"name": name, "new_owner": new_owner}
        change = Change(ChangeKind.HAND_OVER, args, Action.HAND_OVER, (name,))
        await require(svc, session, request, change=change, records=[record])
        previous, record.owner = record.owner, new_owner
        detail = {"from": previous, "to": new_owner}
        _audit(session, request, Action.HAND_OVER, name, detail=detail)
        await session.commit()
    return previous


async def bind_channel(svc: Services, request: Request, *, name: str, channel: str) -> None:
    async with svc.sessions() as session:
        record = await _checked(svc, session, request, name=name, action=Action.BIND_CHANNEL)
        repo.bind_channel(record, channel=channel)
        _audit(session, request, Action.BIND_CHANNEL, name, detail={"bound": channel})
        await session.commit()


async def set_notify_channel(svc: Services, request: Request, *, name: str, channel: str) -> None:
    """Where the team hears about the environment (its clones, swaps, splits, deletion)."""
    async with svc.sessions() as session:
        record = await _checked(svc, session, request, name=name, action=Action.NOTIFY)
        record.notify_channel = channel
        _audit(session, request, Action.NOTIFY, name, detail={"channel": channel})
        await session.commit()


async def forget_environment(svc: Services, request: Request, *, name: str) -> list[str]:
    """An admin frees the name of an environment that is down: its record goes, with its
    owner, people, channels, domains and routes. Refused while it has containers (delete it
    instead). Returns what Docker still has of it (its volumes), which keeps holding the name.
    """
    access.check_user(request.user)
    async with svc.sessions() as session:
        record = await repo.get_environment(session, name)
        # decided before anything else is told (whether it exists, has containers)
        known = access.access_of(record) if record else Access(name=name, owner=None)
        decision = decide(
            user=request.user, action=Action.FORGET, access=known, channel=request.channel,
            admins=svc.settings.admins,
        )  # fmt: skip
        if not decision.allowed:
            _audit_forget(session, request, name, allowed=False, reason=decision.reason)
            await session.commit()
            raise Forbidden(decision.reason)
        # on the engine the record places it (one away: refused, as it cannot be told down)
        engine = svc.on(record.engine) if record is not None else svc
        if await environment_exists(engine.docker, name):
            raise BadRequest(f"{name} has containers, so it is not down: delete it instead")
        if record is None:
            raise EnvironmentNotFound(name)
        if record.state != "ready":
            raise BadRequest(f"a job is making {name}: it is not down")
        # as a delete would: never under a job that uses it (a refresh into it, say)
        await serialize(session)
        await check_not_busy(session, Job(id="", kind=JobKind.DELETE.value, environment=name))
        await repo.delete_environment(session, name)
        _audit_forget(session, request, name, allowed=True, owner=record.owner)
        await session.commit()
    return [str(h) for h in (await held_names(engine.docker)).holders(name)]


def _audit_forget(
    session: AsyncSession,
    request: Request,
    name: str,
    *,
    allowed: bool,
    reason: str = "",
    owner: str | None = None,
) -> None:
    repo.record_audit(
        session, actor=request.user, action="forget", environment=name, channel=request.channel,
        allowed=allowed, reason=reason, detail={"owner": owner} if allowed else {},
    )  # fmt: skip


async def _checked(
    svc: Services, session: AsyncSession, request: Request, *, name: str, action: Action
) -> EnvironmentRecord:
    _, record = await access.check_request(svc, session, request, name=name, action=action)
    return record


def _audit(
    session: AsyncSession,
    request: Request,
    action: Action,
    name: str,
    *,
    detail: dict[str, str | None],
) -> None:
    repo.record_audit(
        session,
        actor=request.user,
        action=action.value,
        environment=name,
        channel=request.channel,
        allowed=True,
        detail=dict(detail),
    )

"""Protected environments: their changes wait for a second person's approval.

A change to a protected environment (a swap, split or failover of its traffic, unbinding one
of its domains, a delete, a rename, a refresh into it, a hand-over, or taking the protection
off) is not made when asked: ``require`` records an approval request and raises
``ApprovalNeeded``. Another person with the same right on every environment of the change
approves it (or rejects it); the change is then made in the asker's name (``perform``),
checked again as it runs. An approval is bound to that exact change and to whoever asked,
used once, and lapses after CLONEBOT_APPROVAL_TTL.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update

from services import access, permissions
from services.access import Request
from services.context import Services
from services.errors import ApprovalNeeded, BadRequest, Forbidden
from services.permissions import Action
from services.settings import Settings
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import Approval, EnvironmentRecord, Job, utcnow


class ChangeKind(StrEnum):
    SWAP = "swap"
    SPLIT = "split"
    FAILOVER = "failover"
    DELETE = "delete"
    RENAME = "rename"
    REFRESH = "refresh"
    HAND_OVER = "hand over"
    DOMAIN_REMOVE = "domain remove"
    UNPROTECT = "unprotect"


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    USED = "used"


@dataclass(frozen=True)
class Change:
    """One change, exactly: what ``require`` binds an approval to."""

    kind: ChangeKind
    args: dict[str, Any]
    action: Action  # what its asker, and its approver, must be allowed on each environment
    environments: tuple[str, ...]

    @property
    def digest(self) -> str:
        canonical = json.dumps({"kind": self.kind.value, "args": self.args}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def describe(kind: str, args: dict[str, Any]) -> str:
    """The change in words: "swap the domains of prod and dev-copy"."""
    match kind:
        case ChangeKind.SWAP:
            return f"swap the domains of {args['first']} and {args['second']}"
        case ChangeKind.SPLIT:
            shares = " and ".join(f"{env} {w}" for env, w in args["weights"].items())
            sticky = ", sticky" if args["sticky"] else ""
            return f"split {args['domain']} between {shares}{sticky}"
        case ChangeKind.FAILOVER:
            return (
                f"serve {args['domain']} from {args['primary']}, failing over to {args['backup']}"
            )
        case ChangeKind.DELETE:
            return f"delete {args['name']}" + (" with its volumes" if args.get("force") else "")
        case ChangeKind.RENAME:
            return f"rename {args['name']} to {args['new_name']}"
        case ChangeKind.REFRESH:
            return f"refresh {args['name']} from its source"
        case ChangeKind.HAND_OVER:
            return f"hand {args['name']} over to <@{args['new_owner']}>"
        case ChangeKind.UNPROTECT:
            return f"take the protection off {args['name']}"
        case ChangeKind.DOMAIN_REMOVE:
            return f"unbind {args['domain']} from {args['env']}"
    return kind


async def require(
    svc: Services,
    session: AsyncSession,
    request: Request,
    *,
    change: Change,
    records: Sequence[EnvironmentRecord],
) -> None:
    """Let ``change`` through when none of ``records`` is protected, or with its approval
    (``request.approval``, used up here); else record an approval request (committed, with
    nothing else) and raise ``ApprovalNeeded``. Call it after the permission check and before
    anything is changed."""
    protected = sorted(r.name for r in records if r.protected)
    if not protected:
        return
    if request.approval is not None:
        await _use(session, request, change=change)
        return
    if not approvers(svc.settings, records=records, action=change.action) - {request.user}:
        names = ", ".join(protected)
        raise BadRequest(
            f"{names} is protected and nobody but you may approve this: an admin "
            "(CLONEBOT_ADMINS) may, or share it with someone who can"
        )
    now = utcnow()
    asked = await session.scalar(
        select(Approval).where(
            Approval.digest == change.digest,
            Approval.requested_by == request.user,
            Approval.state == ApprovalState.PENDING,
            Approval.expires_at > now,
        )
    )
    new = asked is None
    if asked is None:  # a second delivery of the same request finds the first's
        asked = Approval(
            id=secrets.token_hex(4), kind=change.kind.value, args=change.args,
            digest=change.digest, environments=list(change.environments),
            action=change.action.value, requested_by=request.user, channel=request.channel,
            state=ApprovalState.PENDING, created_at=now,
            expires_at=now + svc.settings.approval_ttl,
        )  # fmt: skip
        session.add(asked)
        _audit(session, request.user, "approval asked", asked, channel=request.channel)
        await session.commit()
    raise ApprovalNeeded(
        approval=asked.id, protected=tuple(protected), change=describe(asked.kind, asked.args),
        new=new,
    )  # fmt: skip


def approvers(
    settings: Settings, *, records: Sequence[EnvironmentRecord], action: Action
) -> set[str]:
    """Who may approve ``action`` on every one of ``records``: the admins, and the owners and
    collaborators the permission check allows it on each."""
    people: set[str] | None = None
    for record in records:
        known = {record.owner, *(c.user for c in record.collaborators)} - {None}
        allowed = {
            user for user in known | settings.admins
            if user is not None and permissions.decide(
                user=user, action=action, access=access.access_of(record), channel=None,
                admins=settings.admins,
            ).allowed
        }  # fmt: skip
        people = allowed if people is None else people & allowed
    return people or set()


async def approval_channel(svc: Services, approval: Approval) -> str | None:
    """Where its message must go when an environment of it takes commands only in its
    channels: where it was asked (a channel it was allowed from); None: the team channel."""
    async with svc.sessions() as session:
        for name in approval.environments:
            record = await repo.get_environment(session, str(name))
            if record is not None and record.channels:
                return approval.channel
    return None


async def _use(session: AsyncSession, request: Request, *, change: Change) -> None:
    """Use up the approval ``request`` carries, if it is this change's, approved, unused and
    not lapsed; else refuse. Used in the change's own transaction: it is used only if the
    change is made."""
    approval = await session.get(Approval, request.approval)
    if approval is None or approval.requested_by != request.user:
        raise Forbidden(f"approval {request.approval} is not one of yours")
    if approval.digest != change.digest:
        raise Forbidden(f"approval {approval.id} was given for another change")
    if approval.state != ApprovalState.APPROVED:
        raise BadRequest(f"approval {approval.id} is {approval.state}, not approved")
    if approval.expires_at <= utcnow():
        raise BadRequest(f"approval {approval.id} lapsed: ask again")
    result = await session.execute(
        update(Approval)
        .where(Approval.id == approval.id, Approval.state == ApprovalState.APPROVED)
        .values(state=ApprovalState.USED)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise BadRequest(f"approval {approval.id} was used already")
    _audit(session, request.user, "approval used", approval, channel=request.channel)


async def decide(svc: Services, request: Request, *, approval_id: str, approve: bool) -> Approval:
    """Approve or reject a pending approval: by someone other than who asked, with the
    change's right on every environment it touches (checked as for the change itself)."""
    access.check_user(request.user)
    async with svc.sessions() as session:
        approval = await session.get(Approval, approval_id)
        if approval is None:
            raise BadRequest(f"no approval {approval_id!r}: `clonebot approvals` lists them")
        if approval.state != ApprovalState.PENDING:
            raise BadRequest(f"approval {approval.id} was {approval.state} already")
        if approval.expires_at <= utcnow():
            raise BadRequest(f"approval {approval.id} lapsed: its asker must ask again")
        if approval.requested_by == request.user:
            raise Forbidden("you asked for this change: someone else must approve it")
        for name in approval.environments:
            await access.check_recorded(
                svc, session, request, name=str(name), action=Action(approval.action)
            )
        state = ApprovalState.APPROVED if approve else ApprovalState.REJECTED
        result = await session.execute(
            update(Approval)
            .where(Approval.id == approval.id, Approval.state == ApprovalState.PENDING)
            .values(state=state, decided_by=request.user, decided_at=utcnow())
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise BadRequest(f"approval {approval.id} was decided already")
        _audit(session, request.user, f"approval {state}", approval, channel=request.channel)
        await session.commit()
        await session.refresh(approval)
    return approval


async def pending_approvals(svc: Services, *, approval_id: str | None = None) -> list[Approval]:
    """The approvals waiting for a decision (not lapsed), oldest first; with ``approval_id``,
    that one alone if it waits."""
    query = select(Approval).where(
        Approval.state == ApprovalState.PENDING, Approval.expires_at > utcnow()
    )
    if approval_id is not None:
        query = query.where(Approval.id == approval_id)
    async with svc.sessions() as session:
        return list((await session.scalars(query.order_by(Approval.created_at))).all())


async def record_message(svc: Services, approval_id: str, *, channel: str, ts: str) -> None:
    """Where the approval's message is, for its update once decided."""
    async with svc.sessions() as session, session.begin():
        await session.execute(
            update(Approval)
            .where(Approval.id == approval_id)
            .values(slack_channel=channel, slack_ts=ts)
        )


@dataclass
class Performed:
    """What an approved change did: a job to follow, or a change of traffic to apply."""

    job: Job | None = None
    traffic: bool = False
    environments: tuple[str, ...] = field(default=())


async def perform(svc: Services, approval: Approval) -> Performed:
    """Make an approved change, in its asker's name (checked again, as when asked)."""
    from services import jobs, ownership  # they call ``require``: imported late
    from services.traffic import routing

    request = Request(approval.requested_by, approval.channel, approval=approval.id)
    args = approval.args
    names = tuple(str(n) for n in approval.environments)
    match approval.kind:
        case ChangeKind.SWAP:
            await routing.swap_domains(svc, request, first=args["first"], second=args["second"])
            return Performed(traffic=True, environments=names)
        case ChangeKind.SPLIT:
            await routing.set_split(
                svc, request, domain=args["domain"], weights=dict(args["weights"]),
                sticky=bool(args["sticky"]),
            )  # fmt: skip
            return Performed(traffic=True, environments=names)
        case ChangeKind.FAILOVER:
            await routing.set_failover(
                svc, request, domain=args["domain"], primary=args["primary"],
                backup=args["backup"],
            )  # fmt: skip
            return Performed(traffic=True, environments=names)
        case ChangeKind.DELETE:
            force = bool(args.get("force"))
            job = await jobs.submit_delete(svc, request, name=args["name"], force=force)
            return Performed(job=job, environments=names)
        case ChangeKind.RENAME:
            new_name = args["new_name"]
            job = await jobs.submit_rename(svc, request, name=args["name"], new_name=new_name)
            return Performed(job=job, environments=names)
        case ChangeKind.REFRESH:
            job = await jobs.submit_refresh(svc, request, name=args["name"])
            return Performed(job=job, environments=names)
        case ChangeKind.HAND_OVER:
            await ownership.hand_over_environment(
                svc, request, name=args["name"], new_owner=args["new_owner"]
            )
            return Performed(environments=names)
        case ChangeKind.UNPROTECT:
            await set_protected(svc, request, name=args["name"], protected=False)
            return Performed(environments=names)
        case ChangeKind.DOMAIN_REMOVE:
            await routing.remove_domain(svc, request, env=args["env"], domain=args["domain"])
            return Performed(traffic=True, environments=names)
    raise BadRequest(f"approval {approval.id} is of a kind this clonebot does not know")


async def set_protected(svc: Services, request: Request, *, name: str, protected: bool) -> None:
    """Protect an environment (its owner or an admin); taking it off is itself a change that
    needs approval."""
    access.check_user(request.user)
    async with svc.sessions() as session:
        _, record = await access.check_recorded(
            svc, session, request, name=name, action=Action.PROTECT
        )
        if not protected:
            change = Change(ChangeKind.UNPROTECT, {"name": name}, Action.PROTECT, (name,))
            await require(svc, session, request, change=change, records=[record])
        record.protected = protected
        repo.record_audit(
            session, actor=request.user, action="protect" if protected else "unprotect",
            environment=name, channel=request.channel, allowed=True,
        )  # fmt: skip
        await session.commit()


def _audit(
    session: AsyncSession, actor: str, action: str, approval: Approval, *, channel: str | None
) -> None:
    environments = [str(n) for n in approval.environments]
    repo.record_audit(
        session, actor=actor, action=action, environment=environments[0] if environments else None,
        channel=channel, allowed=True,
        detail={"approval": approval.id, "change": describe(approval.kind, approval.args),
                "asked by": approval.requested_by},
    )  # fmt: skip

"""Domains and routes: bound, swapped, split and failed over, checked and audited.

The database is the source of truth; ``router_state`` turns it, with the web nodes Docker
shows, into what HAProxy must serve (see ``services/traffic/router.py``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Integer, bindparam, case, update

from services import access
from services.access import Request
from services.approvals import Change, ChangeKind, require
from services.context import Services
from services.errors import BadRequest, EnvironmentNotFound, Forbidden
from services.permissions import Action
from services.traffic.haproxy import RouterFiles, read_map
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import DomainBinding, EnvironmentRecord, Route

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def site_url(host: str, *, port: int) -> str:
    """The address of a site the router serves on ``port``: the port is left out if 80."""
    return f"http://{host}/" if port == 80 else f"http://{host}:{port}/"


def validate_domain(domain: str) -> str:
    """The domain in its ASCII (IDNA) form, or ``BadRequest`` naming what is wrong."""
    text = domain.strip().rstrip(".").lower()
    try:
        ascii_form = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise BadRequest(f"{domain!r} is not a valid domain name") from None
    labels = ascii_form.split(".")
    if len(labels) < 2 or len(ascii_form) > 253:
        raise BadRequest(
            f"{domain!r} is not a valid domain name: it needs a dot, at most 253 characters"
        )
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise BadRequest(
                f"{domain!r} is not a valid domain name: {label!r} must be 1-63 letters, digits "
                "or hyphens, not starting or ending with a hyphen"
            )
    return ascii_form


def routable_domain(domain: str) -> bool:
    """Whether a domain (as stored) is exactly as ``validate_domain`` returns it."""
    try:
        return validate_domain(domain) == domain
    except BadRequest:
        return False


def _plain(domain: str) -> str:
    text = domain.strip().rstrip(".").lower()
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return text


def is_internal(domain: str, *, base_domain: str) -> bool:
    """Whether ``domain`` is the base domain or under it, where internal domains live."""
    name, base = _plain(domain), _plain(base_domain)
    return name == base or name.endswith(f".{base}")


def internal_environment(domain: str, *, base_domain: str) -> str | None:
    """The environment whose internal domain ``domain`` is named for (``<env>.<base domain>``),
    whether or not it exists; None for any other domain."""
    name, base = _plain(domain), _plain(base_domain)
    env = name.removesuffix(f".{base}")
    return env if env != name and env and "." not in env else None


def custom_domain(domain: str, *, base_domain: str) -> str:
    """``validate_domain``, and refused when under the base domain: every environment's
    internal domain ``<env>.<base domain>`` is derived from its name, never bound by hand."""
    name = validate_domain(domain)
    if is_internal(name, base_domain=base_domain):
        base = _plain(base_domain)
        raise BadRequest(
            f"{name} is under {base}, where clonebot gives every environment its internal "
            f"domain (<env>.{base}): bind a domain of your own"
        )
    return name


async def add_domain(svc: Services, request: Request, *, env: str, domain: str) -> str:
    name = custom_domain(domain, base_domain=svc.settings.base_domain)
    async with svc.sessions() as session:
        [record] = await _checked(svc, session, request, env, web=True)
        bound = await _binding(session, name)
        if bound is not None:
            owner = await session.get(EnvironmentRecord, bound.environment_id)
            raise BadRequest(
                f"{name} is already bound to {owner.name if owner else 'another environment'}"
            )
        session.add(DomainBinding(domain=name, environment_id=record.id))
        _audit(session, request, "domain add", env, {"domain": name})
        await session.commit()
    return name


async def remove_domain(svc: Services, request: Request, *, env: str, domain: str) -> str:
    """Unbind a domain, also from an environment that is down (its record decides): one
    that serves a domain cannot be deleted, and must not be kept forever for it."""
    name = validate_domain(domain)
    async with svc.sessions() as session:
        _, record = await access.check_recorded(
            svc, session, request, name=env, action=Action.MOVE_TRAFFIC
        )
        bound = await _binding(session, name)
        if bound is None or bound.environment_id != record.id:
            raise BadRequest(f"{name} is not bound to {env}")
        route = await session.get(Route, name)
        # its route goes with it: a protected environment sharing it loses that traffic too
        sharing = [
            r for i in ((route.primary_id, route.secondary_id) if route else ())
            if i != record.id and (r := await session.get(EnvironmentRecord, i)) is not None
        ]  # fmt: skip
        change = Change(
            ChangeKind.DOMAIN_REMOVE, {"env": env, "domain": name}, Action.MOVE_TRAFFIC,
            (env, *(r.name for r in sharing)),
        )  # fmt: skip
        await require(svc, session, request, change=change, records=[record, *sharing])
        await session.delete(bound)
        if route is not None:
            await session.delete(route)
        _audit(session, request, "domain remove", env, {"domain": name})
        await session.commit()
    return name


async def swap_domains(
    svc: Services, request: Request, *, first: str, second: str
) -> dict[str, str]:
    """Exchange the custom domains of two environments, in one transaction: each domain moved,
    with the environment it now leads to."""
    if first == second:
        raise BadRequest(f"swapping {first} with itself changes nothing: name two environments")
    async with svc.sessions() as session:
        a, b = await _checked(svc, session, request, first, second, web=True)
        change = Change(
            ChangeKind.SWAP, {"first": first, "second": second}, Action.MOVE_TRAFFIC,
            (first, second),
        )  # fmt: skip
        await require(svc, session, request, change=change, records=[a, b])
        # Core statements built once, on the session's connection: a swap waits for the
        # ORM's CPU under load (the bindings are in no session: nothing to synchronize)
        connection = await session.connection()
        moved = await connection.execute(_SWAP_BINDINGS, {"a": a.id, "b": b.id})
        names = {a.id: a.name, b.id: b.name}
        leads = {domain: names[env_id] for domain, env_id in moved.all()}
        await connection.execute(
            repo.AUDIT_INSERT, _audited(request, "swap", first, {"with": second})
        )
        await session.commit()
    return leads


# run on a connection, not the session: compiled as Core, with no ORM bookkeeping
_A, _B = bindparam("a", type_=Integer), bindparam("b", type_=Integer)
_SWAP_BINDINGS = (
    update(DomainBinding)
    .where(DomainBinding.environment_id.in_((_A, _B)))
    .values(environment_id=case((DomainBinding.environment_id == _A, _B), else_=_A))
    .returning(DomainBinding.domain, DomainBinding.environment_id)
)


def parse_weights(items: Sequence[str]) -> dict[str, int]:
    """``["prod=90", "dev=10"]`` as ``{"prod": 90, "dev": 10}``, for a front door's words."""
    shares: dict[str, int] = {}
    for item in items:
        env, _, weight = item.partition("=")
        if not env or not weight.isdigit():
            raise BadRequest(f"{item!r} is not ENV=WEIGHT (like prod=90)")
        if env in shares:
            raise BadRequest(f"{env} is named twice: a split is between two environments")
        shares[env] = int(weight)
    return shares


async def set_split(
    svc: Services, request: Request, *, domain: str, weights: dict[str, int], sticky: bool
) -> None:
    """Share a domain's traffic by weight (0-100) between two environments."""
    if len(weights) != 2:
        raise BadRequest("a split names two different environments, like A=90 B=10")
    if any(not 0 <= w <= 100 for w in weights.values()):
        raise BadRequest("weights are whole numbers from 0 to 100")
    if sum(weights.values()) == 0:
        raise BadRequest("at least one weight must be above 0")
    (first, w1), (second, w2) = weights.items()
    await _set_route(
        svc, request, domain=domain, kind="split", envs=(first, second),
        weight=round(100 * w1 / (w1 + w2)), sticky=sticky,
    )  # fmt: skip


async def set_failover(
    svc: Services, request: Request, *, domain: str, primary: str, backup: str
) -> None:
    if primary == backup:
        raise BadRequest("failover needs two different environments")
    await _set_route(
        svc, request, domain=domain, kind="failover", envs=(primary, backup), weight=100,
        sticky=False,
    )  # fmt: skip


async def _set_route(
    svc: Services,
    request: Request,
    *,
    domain: str,
    kind: str,
    envs: tuple[str, str],
    weight: int,
    sticky: bool,
) -> None:
    name = custom_domain(domain, base_domain=svc.settings.base_domain)
    async with svc.sessions() as session:
        first, second = await _checked(svc, session, request, *envs, web=True)
        await require(
            svc, session, request, change=_route_change(name, kind, envs, weight, sticky),
            records=[first, second],
        )  # fmt: skip
        bound = await _binding(session, name)
        if bound is None or bound.environment_id not in (first.id, second.id):
            raise BadRequest(f"{name} must first be bound to {envs[0]} or {envs[1]}")
        route = await session.get(Route, name) or Route(domain=name)
        route.kind, route.primary_id, route.secondary_id = kind, first.id, second.id
        route.weight, route.sticky = weight, sticky
        session.add(route)
        detail = {"domain": name, "primary": envs[0], "secondary": envs[1], "weight": str(weight)}
        _audit(session, request, kind, envs[0], detail)
        await session.commit()


def _route_change(
    domain: str, kind: str, envs: tuple[str, str], weight: int, sticky: bool
) -> Change:
    """A route as a change to approve: what ``set_split``/``set_failover`` ask, exactly."""
    if kind == "failover":
        args: dict[str, Any] = {"domain": domain, "primary": envs[0], "backup": envs[1]}
        return Change(ChangeKind.FAILOVER, args, Action.MOVE_TRAFFIC, envs)
    weights = {envs[0]: weight, envs[1]: 100 - weight}
    args = {"domain": domain, "weights": weights, "sticky": sticky}
    return Change(ChangeKind.SPLIT, args, Action.MOVE_TRAFFIC, envs)


async def _checked(
    svc: Services, session: AsyncSession, request: Request, *names: str, web: bool = False
) -> list[EnvironmentRecord]:
    """The records of ``names``, if ``request`` may move their traffic; else raise.

    With ``web``, an environment without a web layer (nothing to send traffic to) is refused,
    and so is one clonebot stopped (asleep or expired: nothing would wake it for that traffic).
    Environments the router serves already are checked from their records alone: a swap
    must be quick, and a Docker listing waits for a CPU under load.
    """
    records = None
    if web and set(names) <= served_environments(svc):
        records = await access.check_records(
            svc, session, request, names=names, action=Action.MOVE_TRAFFIC
        )
    if records is None:
        checked = await access.check_glimpses(
            svc, session, request, names=names, action=Action.MOVE_TRAFFIC
        )
        for env, _ in checked:
            if web and not env.has_web_layer:
                raise BadRequest(
                    f"{env.name} has no web layer (no container carries clonebot.http.port)"
                )
        records = [record for _, record in checked]
    for record in records:
        if web and record.stopped:
            raise BadRequest(
                f"{record.name} is stopped ({record.stopped}): wake it first "
                f"(`/env wake {record.name}`)"
            )
    return records


def served_environments(svc: Services) -> set[str]:
    """The environments the router serves at their internal domains, as its map says now."""
    if svc.settings.router_dir is None:
        return set()
    files = RouterFiles(svc.settings.router_dir)
    # a few hundred bytes, read in the event loop: a thread would wait for a CPU under load
    text = files.hosts.read_text() if files.hosts.exists() else ""
    suffix = f".{_plain(svc.settings.base_domain)}"
    return {d.removesuffix(suffix) for d in read_map(text) if d.endswith(suffix)}


async def domain_holder(
    svc: Services,
    session: AsyncSession,
    request: Request,
    domain: str,
    action: Action,
    *,
    bound: bool = True,
) -> str | None:
    """The environment ``domain`` is bound to (an internal domain: the environment it is
    named for), once ``request`` may do ``action`` to it.

    A domain bound to none (its certificate stays with the name) is for admins alone;
    ``bound`` refuses it whoever asks."""
    if (internal := internal_environment(domain, base_domain=svc.settings.base_domain)) is not None:
        with contextlib.suppress(EnvironmentNotFound):  # deleted or renamed: as if unbound
            await access.check_recorded(svc, session, request, name=internal, action=action)
            return internal
        record = None
    else:
        binding = await session.get(DomainBinding, domain)
        record = await session.get(EnvironmentRecord, binding.environment_id) if binding else None
    if record is None:
        if bound and internal is not None:
            raise BadRequest(
                f"{domain} is no environment's internal domain: none is named {internal}"
            )
        if bound:
            raise BadRequest(f"{domain} is bound to no environment: bind it first (domain add)")
        if request.user not in svc.settings.admins:
            reason = (
                f"{domain} is bound to no environment: only an admin may do this "
                "(or bind it first: domain add)"
            )
            repo.record_audit(
                session, actor=request.user, action=action.value, environment=None,
                channel=request.channel, allowed=False, reason=reason,
            )  # fmt: skip
            await session.commit()
            raise Forbidden(reason)
        return None
    await access.check_recorded(svc, session, request, name=record.name, action=action)
    return record.name


async def _binding(session: AsyncSession, domain: str) -> DomainBinding | None:
    return await session.get(DomainBinding, domain)


def _audit(
    session: AsyncSession, request: Request, action: str, env: str, detail: dict[str, str]
) -> None:
    repo.record_audit(session, **_audited(request, action, env, detail))


def _audited(request: Request, action: str, env: str, detail: dict[str, str]) -> dict[str, Any]:
    """The audit entry of an action ``request`` was allowed: ``record_audit``'s arguments."""
    return {
        "actor": request.user, "action": action, "environment": env,
        "channel": request.channel, "allowed": True, "detail": dict(detail),
    }  # fmt: skip

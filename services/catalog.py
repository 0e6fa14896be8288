"""What one user may see: the environments, with their domains and routes, and jobs running.

Read-only, for the front doors' lists (Slack's /env list, its App Home, the clone form's
source picker). Every entry is decided by the permission check, as an action would be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from services.access import access_of, check_user, label_owner
from services.context import Services
from services.environments import Environment
from services.located import fleet_environments
from services.naming import default_clone_name, held_names
from services.permissions import Action, decide
from storage import repositories as repo
from storage.models import DomainBinding, EnvironmentRecord, Job, JobState, Route


@dataclass(frozen=True)
class RouteView:
    """A domain's route, by environment name."""

    domain: str
    kind: str  # "split" or "failover"
    primary: str
    secondary: str
    weight: int  # the primary's share of a split
    sticky: bool


@dataclass(frozen=True)
class EnvironmentView:
    env: Environment
    owner: str | None
    role: str  # what the user is to it: "owner", "admin", "operator" or "viewer"
    cloned_from: str | None
    may_clone: bool
    notify_channel: str | None = None
    domains: tuple[str, ...] = ()
    routes: tuple[RouteView, ...] = field(default=())
    expires_at: datetime | None = None  # a clone's; None: never
    stopped: str | None = None  # why clonebot stopped it (services.sleep.Stopped), if it did
    unreachable: str | None = None  # why its engine does not answer, when it does not

    @property
    def engine(self) -> str:
        return self.env.engine

    @property
    def name(self) -> str:
        return self.env.name

    @property
    def down(self) -> bool:
        """Recorded, with no container: it keeps its owner, people and domains meanwhile."""
        return not self.env.nodes


async def visible_environments(
    svc: Services, *, user: str, channel: str | None = None
) -> list[EnvironmentView]:
    """The environments ``user`` may view (asked from ``channel``), by name, with their
    custom domains and the routes they take part in; those that are down (recorded, with no
    container) without layers."""
    check_user(user)
    fleet = await fleet_environments(svc)
    envs = fleet.environments
    async with svc.sessions() as session:
        records = {r.name: r for r in await repo.list_environments(session)}
        names = {r.id: r.name for r in records.values()}
        bindings = (await session.scalars(select(DomainBinding))).all()
        routes = (await session.scalars(select(Route))).all()
    domains: dict[str, list[str]] = {}
    for binding in bindings:
        if binding.environment_id in names:
            domains.setdefault(names[binding.environment_id], []).append(binding.domain)
    route_views = [
        RouteView(r.domain, r.kind, names[r.primary_id], names[r.secondary_id], r.weight, r.sticky)
        for r in routes
        if r.primary_id in names and r.secondary_id in names
    ]
    running = {env.name for env in envs}
    envs += [
        Environment(name=r.name, layers=(), engine=r.engine)
        for r in records.values()
        if r.state == "ready" and r.name not in running
    ]
    views = []
    for env in envs:
        # one never seen yet is owned as its first check will record it
        record = records.get(env.name) or EnvironmentRecord(
            name=env.name, owner=label_owner(env), cloned_from=env.cloned_from
        )
        view = _view(svc, env, record, user=user, channel=channel)
        if view is None:
            continue
        own_routes = tuple(r for r in route_views if env.name in (r.primary, r.secondary))
        views.append(
            EnvironmentView(
                env=env, owner=view.owner, role=view.role, cloned_from=view.cloned_from,
                may_clone=view.may_clone, notify_channel=record.notify_channel,
                domains=tuple(sorted(domains.get(env.name, ()))), routes=own_routes,
                expires_at=record.expires_at, stopped=record.stopped,
                unreachable=fleet.unreachable.get(env.engine),
            )
        )  # fmt: skip
    return sorted(views, key=lambda v: v.name)


def _view(
    svc: Services, env: Environment, record: EnvironmentRecord, *, user: str, channel: str | None
) -> EnvironmentView | None:
    access = access_of(record)
    admins = svc.settings.admins

    def allowed(action: Action) -> bool:
        return decide(
            user=user, action=action, access=access, channel=channel, admins=admins
        ).allowed

    if not allowed(Action.VIEW):
        return None
    if user == record.owner:
        role = "owner"
    elif user in admins:
        role = "admin"
    else:
        role = access.collaborators[user].value
    return EnvironmentView(
        env=env,
        owner=record.owner,
        role=role,
        cloned_from=record.cloned_from or env.cloned_from,
        may_clone=allowed(Action.CLONE) and bool(env.nodes),  # one that is down has nothing
    )


async def suggest_clone_name(svc: Services, *, source: str) -> str:
    """The clone form's default, as a clone asked without a name gets: ``<source>-clone<N>``,
    skipping every name something holds (a container, volume or network, or a record)."""
    async with svc.sessions() as session:
        recorded = [r.name for r in await repo.list_environments(session)]
    return default_clone_name(source, await held_names(svc.docker, recorded=recorded))


async def running_jobs(svc: Services, *, user: str) -> Sequence[Job]:
    """The jobs ``user`` asked for that are queued or running, oldest first."""
    query = (
        select(Job)
        .where(Job.requester == user, Job.state.in_((JobState.QUEUED, JobState.RUNNING)))
        .order_by(Job.created_at)
    )
    async with svc.sessions() as session:
        return (await session.scalars(query)).all()

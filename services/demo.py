"""The demo environment a new user clones first: a shop on ``shop.localhost``.

A web layer of two nodes and a PostgreSQL database holding 42 orders, owned by the
playground's owner, shared with its collaborator, its page saying which environment served
it and how many orders its database holds (``services/demo_nodes.py``). Its image is built
here, never pulled (``services/demo_image.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from services.access import Request
from services.context import Services
from services.demo_image import ensure_postgres_image
from services.demo_nodes import IMAGE, ROWS, ensure_nodes, ensure_orders
from services.errors import EnvironmentNotFound, Forbidden
from services.jobs import run_job, submit_delete
from services.ownership import share_environment
from services.permissions import Role
from services.traffic.routing import add_domain, remove_domain
from storage import repositories as repo
from storage.models import DomainBinding, EnvironmentRecord, JobState

DEMO = "demo"
OWNER = "U0OWNER01"  # the playground's owner
COLLABORATOR = "U0COLLAB01"  # the playground's collaborator: may view it and move its traffic
DOMAIN = "shop.localhost"  # browsers send *.localhost to 127.0.0.1, where the router listens


@dataclass
class DemoReport:
    """What ``ensure_demo`` found and did."""

    name: str
    domain: str
    served_by: str  # the environment the domain is bound to (a clone, after a swap)
    done: list[str] = field(default_factory=list)  # empty: it was all there already


def _ignore(_: str) -> None:
    return None


async def ensure_demo(
    svc: Services,
    *,
    name: str = DEMO,
    owner: str = OWNER,
    collaborator: str = COLLABORATOR,
    domain: str = DOMAIN,
    say: Callable[[str], None] = _ignore,
) -> DemoReport:
    """Make sure the demo ``name`` exists and runs, making only what is missing.

    ``say`` hears about the slow step (the image's first build) before it starts.
    """
    built = await ensure_postgres_image(
        svc.docker, image=IMAGE, busybox=svc.settings.busybox, say=say
    )
    done = [f"built image {IMAGE}"] if built else []
    done += await ensure_nodes(svc.docker, env=name, owner=owner)
    if await ensure_orders(svc.docker, env=name):
        done.append(f"filled its database with {ROWS} orders")
    user = await _owner(svc, name=name, default=owner)
    done += await _share(svc, Request(user), name=name, collaborator=collaborator)
    served_by = await _bound_to(svc, domain=domain)
    if served_by is None:
        await add_domain(svc, Request(user), env=name, domain=domain)
        done.append(f"bound {domain} to {name}")
        served_by = name
    return DemoReport(name=name, domain=domain, served_by=served_by, done=done)


async def remove_demo(
    svc: Services, *, name: str = DEMO, owner: str = OWNER, domain: str = DOMAIN
) -> bool:
    """Delete the demo ``name``: its domain (if it still serves it), containers, network,
    volume and record. The image stays for next time. False when there was no demo."""
    user = Request(await _owner(svc, name=name, default=owner))
    if await _bound_to(svc, domain=domain) == name:
        await remove_domain(svc, user, env=name, domain=domain)
    try:
        job = await submit_delete(svc, user, name=name, force=True)
    except EnvironmentNotFound:
        return False
    if job.state == JobState.QUEUED:  # else a delete asked before is running or done
        await run_job(svc, job.id)
    return True


async def _owner(svc: Services, *, name: str, default: str) -> str:
    """Who owns the demo now (it may have been handed over), else ``default``."""
    async with svc.sessions() as session:
        record = await repo.get_environment(session, name)
    return record.owner if record is not None and record.owner else default


async def _share(svc: Services, request: Request, *, name: str, collaborator: str) -> list[str]:
    async with svc.sessions() as session:
        record = await repo.get_environment(session, name)
        if record is not None and any(c.user == collaborator for c in record.collaborators):
            return []
    try:
        await share_environment(
            svc, request, name=name, user=collaborator, role=Role.OPERATOR.value
        )
    except Forbidden as exc:  # its owner is not who asks: leave its people as they are
        return [f"not shared with {collaborator}: {exc.message}"]
    return [f"shared with {collaborator} ({Role.OPERATOR.value})"]


async def _bound_to(svc: Services, *, domain: str) -> str | None:
    """The environment ``domain`` is bound to, if any."""
    async with svc.sessions() as session:
        binding = await session.get(DomainBinding, domain)
        if binding is None:
            return None
        record = await session.get(EnvironmentRecord, binding.environment_id)
        return record.name if record is not None else None

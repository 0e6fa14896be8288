"""What HAProxy must serve, computed from the database and Docker, and applied to it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from services.context import Services
from services.environments import HTTP_PORT, NUMBER, ONEOFF, PROJECT
from services.haproxy import (
    Backend,
    MasterCLI,
    RouterFailed,
    RouterFiles,
    RuntimeAPI,
    Server,
    apply_to_running,
    locked,
    render_config,
    write_files,
)
from storage.models import DomainBinding, EnvironmentRecord, Route

# per-server weights are scaled so that a share of 100 split over many nodes stays in 1..256
_WEIGHT_SCALE = 2


@dataclass(frozen=True)
class RouterState:
    backends: tuple[Backend, ...]
    hosts: dict[str, str]  # domain -> backend


def env_backend(name: str) -> str:
    return f"env_{name}"


async def router_state(svc: Services) -> RouterState:
    """Every environment with a web layer at its internal domain, plus bound domains and routes.

    One container listing, no inspection: a swap must reach HAProxy in milliseconds.
    """
    envs, (names, bindings, routes) = await asyncio.gather(_web_nodes(svc), _routes(svc))
    backends = {env_backend(n): Backend(env_backend(n), _servers(n, e)) for n, e in envs.items()}
    hosts = {f"{n}.{svc.settings.base_domain}": env_backend(n) for n in envs}
    for binding in bindings:
        if names.get(binding.environment_id) in envs:
            hosts[binding.domain] = env_backend(names[binding.environment_id])
    for route in routes:
        first, second = names[route.primary_id], names[route.secondary_id]
        if first in envs and second in envs:
            backend = _route_backend(route, (first, envs[first]), (second, envs[second]))
            backends[backend.name] = backend
            hosts[route.domain] = backend.name
    return RouterState(tuple(sorted(backends.values(), key=lambda b: b.name)), hosts)


async def _routes(
    svc: Services,
) -> tuple[dict[int, str], Sequence[DomainBinding], Sequence[Route]]:
    """Environment names by id, domain bindings and routes, as the database has them."""
    async with svc.sessions() as session:
        names = {r.id: r.name for r in (await session.scalars(select(EnvironmentRecord))).all()}
        bindings = (await session.scalars(select(DomainBinding))).all()
        routes = (await session.scalars(select(Route))).all()
    return names, bindings, routes


@dataclass(frozen=True)
class WebNode:
    number: int
    address: str  # the bridge address the host reaches it at
    port: int


async def _web_nodes(svc: Services) -> dict[str, list[WebNode]]:
    """The web nodes of every environment, by environment, in node order.

    HAProxy on the host reaches a node at any of its bridge addresses. HAProxy in a container
    reaches it only on a network they share: the container is connected to each web node's
    first network it is not on yet, and the node's address there is used.
    """
    summaries = await svc.docker.list_containers(labels=[PROJECT, HTTP_PORT])
    joined = await _router_networks(svc)
    found: dict[str, list[WebNode]] = {}
    for summary in summaries:
        labels = summary.get("Labels") or {}
        if labels.get(ONEOFF) == "True":
            continue
        networks = {
            name: net["IPAddress"]
            for name, net in ((summary.get("NetworkSettings") or {}).get("Networks") or {}).items()
            if net.get("IPAddress")
        }
        # a stopped node has no address: it is left out until it runs again
        if not networks:
            continue
        if joined is not None and not joined & networks.keys():
            await _connect_router(svc, next(iter(networks)), joined)
        shared = [n for n in networks if joined is None or n in joined]
        port = int(labels[HTTP_PORT]) if labels[HTTP_PORT].isdigit() else 80
        number = int(labels.get(NUMBER, "1")) if labels.get(NUMBER, "1").isdigit() else 1
        found.setdefault(labels[PROJECT], []).append(WebNode(number, networks[shared[0]], port))
    for nodes in found.values():
        nodes.sort(key=lambda n: n.number)
    return found


async def _router_networks(svc: Services) -> set[str] | None:
    """The networks of HAProxy's container; None when HAProxy runs on the host."""
    name = svc.settings.router_container
    if name is None:
        return None
    info = await svc.docker.find_container(name)
    if info is None:
        raise RouterFailed(f"HAProxy's container {name} does not exist (CLONEBOT_ROUTER_CONTAINER)")
    return set((info["NetworkSettings"].get("Networks") or {}).keys())


async def _connect_router(svc: Services, network: str, joined: set[str]) -> None:
    assert svc.settings.router_container is not None
    await svc.docker.connect_network(
        network=network, container=svc.settings.router_container, aliases=[]
    )
    joined.add(network)


def _servers(
    env: str, nodes: list[WebNode], *, share: int = 100, backup: bool = False
) -> tuple[Server, ...]:
    weight = max(1, round(share * _WEIGHT_SCALE / max(len(nodes), 1))) if share else 0
    return tuple(Server(f"{env}-{n.number}", n.address, n.port, weight, backup) for n in nodes)


def _route_backend(
    route: Route, primary: tuple[str, list[WebNode]], secondary: tuple[str, list[WebNode]]
) -> Backend:
    name = f"route_{route.domain}"
    if route.kind == "failover":
        servers = _servers(*primary) + _servers(*secondary, backup=True)
        return Backend(name, servers, health_check=True)
    servers = _servers(*primary, share=route.weight) + _servers(
        *secondary, share=100 - route.weight
    )
    return Backend(name, servers, sticky=route.sticky)


async def apply_now(svc: Services) -> bool:
    """``apply_routes`` with the router of the settings: for a front door that just changed a
    route. False when no HAProxy runs (it gets the routes when it starts)."""
    assert svc.settings.router_dir is not None
    files = RouterFiles(svc.settings.router_dir)
    return await apply_routes(svc, files=files, bind=svc.settings.router_bind)


async def apply_routes(svc: Services, *, files: RouterFiles, bind: str) -> bool:
    """Bring a running HAProxy to the database's routes; False when none is running.

    Files are always written, so an HAProxy started later comes up right. A change in
    backends or servers is a seamless reload; anything else a runtime change.
    """
    async with locked(files):
        state = await router_state(svc)
        config = render_config(files=files, bind=bind, backends=state.backends)
        master = MasterCLI(files.master)
        if not await master.alive():
            await write_files(files, config=config, hosts=state.hosts)
            return False
        api = RuntimeAPI(files.api)
        await apply_to_running(files, api, master, config=config, hosts=state.hosts)
        return True

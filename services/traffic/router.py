"""What HAProxy must serve, computed from the database and Docker, and applied to it."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import select

from services.access import Request
from services.context import Services
from services.docker import JSON, gather_all
from services.environments import HTTP_PORT, NUMBER, ONEOFF, PROJECT, SERVICE, STACK
from services.errors import ClonebotError
from services.fleet import ANSWER_S
from services.ledger import list_services
from services.sleep import Stopped, stopped_page
from services.traffic.certificates import router_tls
from services.traffic.domain_https import write_https_maps
from services.traffic.haproxy import (
    TLS,
    Backend,
    MasterCLI,
    RouterFailed,
    RouterFiles,
    RuntimeAPI,
    Server,
    apply_map,
    apply_to_running,
    bind_of,
    locked,
    read_map,
    render_config,
    replace_files,
    tls_of,
    write_files,
)
from services.traffic.routing import (
    is_internal,
    routable_domain,
    served_environments,
    swap_domains,
)
from storage.models import DomainBinding, EnvironmentRecord, Route

log = logging.getLogger(__name__)

# per-server weights are scaled so that a share of 100 split over many nodes stays in 1..256
_WEIGHT_SCALE = 2
# names that reach HAProxy's configuration and runtime commands: Compose's own rules for a
# project and a service, so a label can never carry a space, a newline or a "#" into them
_PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_NUMBER = re.compile(r"[1-9][0-9]{0,5}")
_PORT = re.compile(r"[1-9][0-9]{0,4}")


@dataclass(frozen=True)
class RouterState:
    backends: tuple[Backend, ...]
    hosts: dict[str, str]  # domain -> backend
    # environments HAProxy cannot be given, and why; every other one is routed
    left_out: dict[str, str] = field(default_factory=dict)


ENV_PREFIX, WAKE_PREFIX, STOPPED_PREFIX = "env_", "wake_", "stopped_"


def env_backend(name: str) -> str:
    return f"{ENV_PREFIX}{name}"


def page_backend(name: str, why: Stopped) -> str:
    """The backend answering for a stopped clone: ``wake_`` where a request wakes it."""
    return f"{WAKE_PREFIX if why is Stopped.IDLE else STOPPED_PREFIX}{name}"


@dataclass(frozen=True)
class WebNodes:
    """What one container listing shows of the environments' web nodes."""

    envs: dict[str, list[WebNode]]  # by environment, in node order
    left_out: dict[str, str]  # environments HAProxy cannot be given, and why
    listed_ns: int = 0  # when the listing began (time.time_ns(): the same in every process)


class Stored(NamedTuple):
    """What the database says of routing: environment names by id, bindings, routes, and why
    clonebot stopped the environments it stopped."""

    names: dict[int, str]
    bindings: Sequence[DomainBinding]
    routes: Sequence[Route]
    stopped: dict[str, Stopped]


async def router_state(svc: Services, *, nodes: WebNodes | None = None) -> RouterState:
    """Every environment with a web layer at its internal domain, plus bound domains and routes.

    One container listing, no inspection: a swap must reach HAProxy in milliseconds. An
    environment whose labels HAProxy cannot be given is left out, with a warning; the others
    are routed all the same. ``nodes``: listed already, before taking the router's lock (a
    listing waits on Docker, and a swap on the lock); the database is read here, under it.
    """
    if nodes is None:
        listed, stored = await asyncio.gather(web_nodes(svc), _stored(svc))
    else:
        listed, stored = nodes, await _stored(svc)
    envs, base = listed.envs, svc.settings.base_domain
    backends = {env_backend(n): Backend(env_backend(n), _servers(e)) for n, e in envs.items()}
    hosts = {f"{n}.{base}": env_backend(n) for n in envs}
    names = stored.names
    for binding in stored.bindings:
        domain = binding.domain
        if _bound(domain, base) and names.get(binding.environment_id) in envs:
            hosts[domain] = env_backend(names[binding.environment_id])
    hosts = _stopped_pages(stored.stopped, envs, backends, hosts)
    for route in stored.routes:
        if not _bound(route.domain, base) or not _well_formed(route):
            continue
        sides = [envs.get(names.get(i, ""), []) for i in (route.primary_id, route.secondary_id)]
        if any(sides):
            backend = _route_backend(route, sides[0], sides[1])
            backends[backend.name] = backend
            hosts[route.domain] = backend.name
    _warn(listed.left_out)
    ordered = tuple(sorted(backends.values(), key=lambda b: b.name))
    return RouterState(ordered, hosts, dict(listed.left_out))


def _rebound(current: Mapping[str, str], stored: Stored, *, base: str) -> dict[str, str] | None:
    """The map ``router_state`` would give after a change of bindings only, from the map now
    (``current``) and the database, without Docker: each bound domain goes where its
    environment's internal domain goes now. None where the map cannot say: an environment it
    does not route, or a route it does not serve (as yet: a clone just made, say)."""
    hosts = {d: b for d, b in current.items() if is_internal(d, base_domain=base)}
    for binding in stored.bindings:
        name = stored.names.get(binding.environment_id)
        if not _bound(binding.domain, base) or name is None:
            continue
        if (backend := current.get(f"{name}.{base}")) is None:
            return None
        hosts[binding.domain] = backend
    for route in stored.routes:
        if not _bound(route.domain, base) or not _well_formed(route):
            continue
        if current.get(route.domain) != route_backend(route.domain):
            return None
        hosts[route.domain] = route_backend(route.domain)
    return hosts


def _stopped_pages(
    stopped: dict[str, Stopped],
    envs: dict[str, list[WebNode]],
    backends: dict[str, Backend],
    hosts: dict[str, str],
) -> dict[str, str]:
    """The domains of a clone clonebot stopped sent to a page saying so (adding its backend to
    ``backends``); routes keep their backends. A clone started by other means than clonebot
    (a web node runs again) is served as usual."""
    pages: dict[str, str] = {}
    for name, why in stopped.items():
        if name in envs and not any(n.address for n in envs[name]):
            page = Backend(page_backend(name, why), (), page=stopped_page(name, why))
            backends[page.name] = page
            pages[env_backend(name)] = page.name
    return {host: pages.get(backend, backend) for host, backend in hosts.items()}


def _bound(domain: str, base: str) -> bool:
    """Whether a domain of the database may reach HAProxy: well formed, and not under the
    base domain (one bound there before that was refused would hide an environment)."""
    return routable_domain(domain) and not is_internal(domain, base_domain=base)


def _well_formed(route: Route) -> bool:
    return route.kind in ("split", "failover") and 0 <= route.weight <= 100


_warned: set[tuple[str, str]] = set()


def _warn(left_out: dict[str, str]) -> None:
    """Each reason once a process: the router keeper asks for the state every second."""
    for env, reason in left_out.items():
        if (env, reason) not in _warned:
            _warned.add((env, reason))
            log.warning("router: %s is left out of routing: %s", env, reason)


async def _stored(svc: Services) -> Stored:
    # three statements in one transaction: each waits for a CPU under load, a swap on them
    columns = (EnvironmentRecord.id, EnvironmentRecord.name, EnvironmentRecord.stopped)
    async with svc.sessions() as session:
        records = (await session.execute(select(*columns))).all()
        bindings = (await session.scalars(select(DomainBinding))).all()
        routes = (await session.scalars(select(Route))).all()
    known = {s.value for s in Stopped}  # a newer clonebot's reason: its domain answers 503
    return Stored(
        names={id_: name for id_, name, _ in records}, bindings=bindings, routes=routes,
        stopped={name: Stopped(why) for _, name, why in records if why in known},
    )  # fmt: skip


@dataclass(frozen=True)
class WebNode:
    layer: str
    number: int
    address: str | None  # the bridge address the host reaches it at; None: not running
    port: int
    server: str = ""  # its name in HAProxy, unique in its environment


class _BadLabels(ValueError):
    pass


def _web_node(labels: dict[str, str], networks: dict[str, str], shared: list[str]) -> WebNode:
    """A node as its labels describe it, or ``_BadLabels`` saying which one is wrong."""
    layer, number, port = labels.get(SERVICE, ""), labels.get(NUMBER, "1"), labels[HTTP_PORT]
    if not _SERVICE_NAME.fullmatch(layer):
        raise _BadLabels(f"{SERVICE}={layer!r} is not a Compose service name")
    if not _NUMBER.fullmatch(number):
        raise _BadLabels(f"{NUMBER}={number!r} is not a container number")
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise _BadLabels(f"{HTTP_PORT}={port!r} is not a port (1-65535)")
    address = networks[shared[0]] if shared else None
    if address is not None:
        ipaddress.ip_address(address)  # Docker's own; a ValueError if ever not
    return WebNode(layer, int(number), address, int(port))


async def web_nodes(svc: Services) -> WebNodes:
    """The web nodes of every environment, by environment, in node order; and the
    environments left out, with why.

    A stopped node has no address: it is kept, not running, so that its environment's routes
    stay (served by the other side of a split or failover). HAProxy on the host reaches a
    node at any of its bridge addresses. HAProxy in a container reaches it only on a network
    they share: the container is connected to each web node's first network it is not on
    yet, and the node's address there is used. A node on another engine is reached at its
    engine's address, on the host port its HTTP port is published on (``_remote_nodes``).
    """
    listed_ns = time.time_ns()
    summaries = await svc.docker.list_containers(labels=[PROJECT, HTTP_PORT])
    joined = await _router_networks(svc)
    found: dict[str, list[WebNode]] = {}
    left_out: dict[str, str] = {}
    for summary in summaries:
        labels = summary.get("Labels") or {}
        if labels.get(ONEOFF) == "True" or not _named_project(labels, left_out):
            continue
        env = labels[PROJECT]
        networks = {
            name: net["IPAddress"]
            for name, net in ((summary.get("NetworkSettings") or {}).get("Networks") or {}).items()
            if net.get("IPAddress")
        }
        if networks and joined is not None and not joined & networks.keys():
            await _connect_router(svc, next(iter(networks)), joined)
        shared = [n for n in networks if joined is None or n in joined]
        try:
            found.setdefault(env, []).append(_web_node(labels, networks, shared))
        except (_BadLabels, ValueError) as exc:
            left_out[env] = str(exc)
    await _remote_nodes(svc, found, left_out)
    await _stack_nodes(svc, found, left_out)
    for env in left_out:
        found.pop(env, None)
    for env, nodes in list(found.items()):
        try:
            found[env] = _named(env, nodes)
        except _BadLabels as exc:
            left_out[env] = str(exc)
            del found[env]
    return WebNodes(found, left_out, listed_ns)


def _named_project(labels: dict[str, str], left_out: dict[str, str]) -> bool:
    env = labels[PROJECT]
    if not _PROJECT_NAME.fullmatch(env):
        left_out[repr(env)] = f"{PROJECT}={env!r} is not a Compose project name"
        return False
    return True


async def _remote_nodes(
    svc: Services, found: dict[str, list[WebNode]], left_out: dict[str, str]
) -> None:
    """The web nodes of the other engines (all asked at once): reached at the engine's
    address, on the host port their HTTP port is published on. A node that does not publish
    it cannot be reached from here: its environment is left out, saying so. An engine that
    does not answer is skipped (its environments have no nodes: their routes answer 503)."""
    now = time.monotonic()
    # one that did not answer is asked again only after a while: each listing waits for it
    others = [
        e for e in svc.fleet.names if e != svc.engine and now - _away.get(e, -_AWAY_S) >= _AWAY_S
    ]

    async def listed(engine: str) -> list[JSON]:
        async with asyncio.timeout(ANSWER_S):
            return await svc.on(engine).docker.list_containers(labels=[PROJECT, HTTP_PORT])

    answers = await asyncio.gather(*(listed(e) for e in others), return_exceptions=True)
    for engine, answer in zip(others, answers, strict=True):
        if isinstance(answer, BaseException):
            if not isinstance(answer, ClonebotError | TimeoutError | OSError):
                raise answer
            if engine not in _away:
                log.warning("router: engine %s does not answer: its web nodes are left out", engine)
            _away[engine] = time.monotonic()
            continue
        try:
            address = await svc.on(engine).docker.host_ip()
        except ClonebotError as exc:  # a name that no longer resolves: as if away
            log.warning("router: engine %s: %s: its web nodes are left out", engine, exc.message)
            _away[engine] = time.monotonic()
            continue
        if _away.pop(engine, None) is not None:
            log.warning("router: engine %s answers again", engine)
        for summary in answer:
            labels = summary.get("Labels") or {}
            if labels.get(ONEOFF) == "True" or not _named_project(labels, left_out):
                continue
            env = labels[PROJECT]
            try:
                node = _web_node(labels, {}, [])
            except (_BadLabels, ValueError) as exc:
                left_out[env] = str(exc)
                continue
            running = summary.get("State") == "running"
            port = _published(summary, node.port, address)
            if running and port is None:
                left_out[env] = (
                    f"its node {node.layer} {node.number} on engine {engine} does not publish "
                    f"its HTTP port {node.port} on a host port: the router cannot reach it"
                )
                continue
            reach = address if running else None
            found.setdefault(env, []).append(replace(node, address=reach, port=port or node.port))


async def _stack_nodes(
    svc: Services, found: dict[str, list[WebNode]], left_out: dict[str, str]
) -> None:
    """The running tasks of Swarm services with an HTTP port label, on the Swarm managers of
    the fleet: reached at their node's address, on the host port the service publishes its
    HTTP port on in ``host`` mode (no routing mesh: it needs IPVS). A stack is seen once,
    whichever of its managers answered first. Engines are asked whether they manage a Swarm
    only every 30 s: most do not, and this runs every second."""
    compose = set(found)  # a stack's label naming a Compose project gets none of its traffic
    seen: set[str] = set()

    async def listed(engine: str) -> tuple[list[JSON], list[JSON], list[JSON]]:
        async with asyncio.timeout(ANSWER_S):
            docker = svc.on(engine).docker
            services = await list_services(docker, labels=[STACK, HTTP_PORT])
            if not services:
                return [], [], []
            nodes, tasks = await gather_all(docker.list_nodes(), docker.running_tasks())
            return services, nodes, tasks

    managers = await _managers(svc)
    answers = await asyncio.gather(*(listed(e) for e in managers), return_exceptions=True)
    for engine, answer in zip(managers, answers, strict=True):
        if isinstance(answer, BaseException):
            if not isinstance(answer, ClonebotError | TimeoutError | OSError):
                raise answer
            log.warning("router: the Swarm of engine %s does not answer: %s", engine, answer)
            continue
        services, nodes, tasks = answer
        addresses = {n["ID"]: _node_address(n) for n in nodes}
        by_service: dict[str, list[JSON]] = {}
        for task in tasks:
            by_service.setdefault(task["ServiceID"], []).append(task)
        for service in services:
            env = (service["Spec"].get("Labels") or {})[STACK]
            if env in compose or service["ID"] in seen:  # seen on another of its managers
                continue
            seen.add(service["ID"])
            if _PROJECT_NAME.fullmatch(env):
                _stack_service(service, by_service, addresses, found, left_out)
            else:
                left_out[repr(env)] = f"{STACK}={env!r} is not a stack name clonebot takes"


def _node_address(node: JSON) -> str | None:
    """Where a Swarm node is reached: its address, or its manager address's host when the
    node reports none of use (0.0.0.0 or loopback, as some managers do)."""
    for candidate in (
        (node.get("Status") or {}).get("Addr"),
        str((node.get("ManagerStatus") or {}).get("Addr") or "").rpartition(":")[0],
    ):
        try:
            address = ipaddress.ip_address(candidate or "")
        except ValueError:
            continue
        if not (address.is_unspecified or address.is_loopback):
            return str(address)
    return None


def _stack_service(
    service: JSON,
    tasks: dict[str, list[JSON]],
    addresses: dict[str, str | None],
    found: dict[str, list[WebNode]],
    left_out: dict[str, str],
) -> None:
    spec = service["Spec"]
    labels = spec.get("Labels") or {}
    env = labels[STACK]
    layer = str(spec["Name"]).removeprefix(f"{env}_")
    port = labels[HTTP_PORT]
    if not _PORT.fullmatch(port) or int(port) > 65535:
        left_out[env] = f"{HTTP_PORT}={port!r} is not a port (1-65535)"
        return
    published = [
        int(p["PublishedPort"])
        for p in (service.get("Endpoint") or {}).get("Ports") or []
        if p.get("TargetPort") == int(port) and p.get("PublishMode") == "host"
        and p.get("PublishedPort")
    ]  # fmt: skip
    if not published:
        left_out[env] = (
            f"service {spec['Name']} does not publish its HTTP port {port} in host mode: "
            "the router cannot reach it"
        )
        return
    for task in tasks.get(service["ID"], []):
        running = (task.get("Status") or {}).get("State") == "running"
        address = addresses.get(task.get("NodeID", "")) if running else None
        node = WebNode(layer, int(task.get("Slot") or 1), address, published[0])
        found.setdefault(env, []).append(node)


async def _managers(svc: Services) -> list[str]:
    """The engines that are Swarm managers, as last seen (asked again after 30 s)."""
    now = time.monotonic()
    stale = [
        e for e in svc.fleet.names if now - _manager_seen.get(e, (-_AWAY_S, False))[0] >= _AWAY_S
    ]

    async def manages(engine: str) -> bool:
        async with asyncio.timeout(ANSWER_S):
            info = await svc.on(engine).docker.info()
        return bool((info.get("Swarm") or {}).get("ControlAvailable"))

    answers = await asyncio.gather(*(manages(e) for e in stale), return_exceptions=True)
    for engine, answer in zip(stale, answers, strict=True):
        _manager_seen[engine] = (now, answer is True)
    return [e for e in svc.fleet.names if _manager_seen.get(e, (0, False))[1]]


_manager_seen: dict[str, tuple[float, bool]] = {}
_AWAY_S = 30.0
_away: dict[str, float] = {}  # engines that did not answer a listing: when (monotonic)


def _published(summary: JSON, port: int, address: str) -> int | None:
    """The host port a container publishes ``port``/tcp on, on every address of its host or
    on ``address``, its engine's."""
    for entry in summary.get("Ports") or []:
        if (entry.get("PrivatePort"), entry.get("Type")) != (port, "tcp"):
            continue
        if entry.get("PublicPort") and entry.get("IP") in ("0.0.0.0", "::", "", None, address):
            return int(entry["PublicPort"])
    return None


async def latest_nodes(svc: Services, *, files: RouterFiles, nodes: WebNodes) -> WebNodes:
    """``nodes`` (listed before taking the router's lock: a listing waits on Docker, and a swap
    on the lock), or a new listing if another apply used one begun later: the last to write
    HAProxy's files must not write an older picture of the containers. Call it holding the
    router's lock; ``stamp_listing`` the one applied."""
    text = _read(files.listed).strip()
    if text.isascii() and text.isdigit() and int(text) > nodes.listed_ns:
        return await web_nodes(svc)
    return nodes


def stamp_listing(files: RouterFiles, nodes: WebNodes) -> None:
    """``nodes`` recorded as the listing HAProxy's files come from (``latest_nodes``): only by
    an apply, not by every round of the keeper that finds nothing to change."""
    replace_files({files.listed: f"{nodes.listed_ns}\n"})


def _named(env: str, nodes: list[WebNode]) -> list[WebNode]:
    """The nodes in order, each with a server name unique in its environment: the layer is
    in it only where the environment has more than one web layer."""
    seen: set[tuple[str, int]] = set()
    for node in nodes:
        if (node.layer, node.number) in seen:
            raise _BadLabels(f"two {node.layer} nodes are numbered {node.number} ({NUMBER})")
        seen.add((node.layer, node.number))
    several = len({n.layer for n in nodes}) > 1
    ordered = sorted(nodes, key=lambda n: (n.number, n.layer))
    return [
        replace(n, server=f"{env}-{n.layer}-{n.number}" if several else f"{env}-{n.number}")
        for n in ordered
    ]


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


def _servers(nodes: list[WebNode], *, share: int = 100, backup: bool = False) -> tuple[Server, ...]:
    weight = max(1, round(share * _WEIGHT_SCALE / max(len(nodes), 1))) if share else 0
    return tuple(
        Server(n.server, n.address or "", n.port, weight, backup, running=n.address is not None)
        for n in nodes
    )


def route_backend(domain: str) -> str:
    return f"route_{domain}"


def _route_backend(route: Route, primary: list[WebNode], secondary: list[WebNode]) -> Backend:
    name = route_backend(route.domain)
    if route.kind == "failover":
        servers = _servers(primary) + _distinct(primary, _servers(secondary, backup=True))
        return Backend(name, servers, health_check=True, check_host=route.domain)
    second = _distinct(primary, _servers(secondary, share=100 - route.weight))
    return Backend(name, _servers(primary, share=route.weight) + second, sticky=route.sticky)


def _distinct(first: list[WebNode], second: tuple[Server, ...]) -> tuple[Server, ...]:
    """``second`` with names the first side has not taken (``a`` with layers ``web`` and
    ``api`` names a server ``a-web-1``, as does ``a-web``'s only layer)."""
    taken = {n.server for n in first}
    return tuple(replace(s, name=f"{s.name}-b") if s.name in taken else s for s in second)


async def apply_now(svc: Services) -> bool:
    """``apply_routes`` with the router of the settings: for a front door that just changed a
    route. False when no HAProxy runs (it gets the routes when it starts).

    How HAProxy listens is kept as the process that runs it set it: this process's
    ``CLONEBOT_ROUTER_BIND`` (a shell's may be unset, or another) is used only where no
    configuration says it yet.
    """
    assert svc.settings.router_dir is not None
    return await apply_routes(svc, files=RouterFiles(svc.settings.router_dir))


async def apply_bindings(svc: Services) -> bool:
    """``apply_now`` for a change of domain bindings only (a swap, a domain bound or unbound):
    the map changes, in one atomic step, backends stay, and Docker is not read.

    Each bound domain goes where its environment's internal domain goes in the map now (its
    backend, or the page of a clone clonebot stopped); a domain with a route keeps it. Where
    the map cannot say (an environment it does not route yet), as ``apply_now``.
    """
    assert svc.settings.router_dir is not None
    files = RouterFiles(svc.settings.router_dir)
    async with locked(files):
        current = read_map(_read(files.hosts))  # a few hundred bytes: no thread
        hosts = _rebound(current, await _stored(svc), base=svc.settings.base_domain)
        if current and hosts is not None:
            return await apply_map(files, hosts=hosts, current=current)
    return await apply_routes(svc, files=files)


async def swap_routes(svc: Services, request: Request, *, first: str, second: str) -> bool:
    """``swap_domains``, and HAProxy's map changed with it in one atomic step: what a front
    door's swap does. Whether HAProxy serves the swap now: False when none runs, or when it
    could not be told (logged; the router keeper applies it within a second). Once the
    database has the swap, nothing raises: a front door saying it failed would be retried,
    and a second swap swaps back.

    The router's lock is held from before the transaction until the map is changed: no other
    change reaches HAProxy in between, so the map as it is now, with the domains moved
    (each where its new environment's internal domain goes), is the database's. No Docker
    read, no second transaction: a swap must be quick whatever the load. A change another
    process committed meanwhile is applied by that process, from the database, right after.
    An environment the map does not serve yet is looked up in Docker first, outside the lock.
    """
    assert svc.settings.router_dir is not None
    files = RouterFiles(svc.settings.router_dir)
    applied: bool | None = None
    if {first, second} <= served_environments(svc):
        async with locked(files):
            moved = await swap_domains(svc, request, first=first, second=second)
            applied = await _telling(_apply_moved(svc, files, moved), first=first, second=second)
    else:
        await swap_domains(svc, request, first=first, second=second)
    if applied is None:
        applied = await _telling(apply_routes(svc, files=files), first=first, second=second)
    return bool(applied)


async def _apply_moved(svc: Services, files: RouterFiles, moved: Mapping[str, str]) -> bool | None:
    """The domains ``moved`` to HAProxy, by the map alone; None where the map cannot say."""
    current = read_map(_read(files.hosts))  # a few hundred bytes: no thread
    hosts = _moved(current, moved, base=svc.settings.base_domain)
    if not current or hosts is None:
        return None
    return await apply_map(files, hosts=hosts, current=current)


async def _telling(work: Awaitable[bool | None], *, first: str, second: str) -> bool | None:
    """``work`` (HAProxy told of a swap the database has), or False when it fails, logged."""
    try:
        return await work
    except Exception as exc:  # the swap is made: the router keeper applies it
        reason = exc.message if isinstance(exc, ClonebotError) else repr(exc)
        log.warning("swap of %s and %s: HAProxy not told yet: %s", first, second, reason)
        return False


def _moved(
    current: Mapping[str, str], moved: Mapping[str, str], *, base: str
) -> dict[str, str] | None:
    """``current`` with each domain of ``moved`` where its environment's internal domain goes;
    a domain with a route keeps it. None where the map cannot say: an environment it does not
    route, or one it shows asleep or stopped (the database says it is not: swapped ones are
    awake, so the map is behind)."""
    hosts = dict(current)
    for domain, env in moved.items():
        if not _bound(domain, base) or current.get(domain) == route_backend(domain):
            continue
        backend = current.get(f"{env}.{base}")
        if backend is None or backend.startswith((WAKE_PREFIX, STOPPED_PREFIX)):
            return None
        hosts[domain] = backend
    return hosts


async def apply_routes(svc: Services, *, files: RouterFiles, bind: str | None = None) -> bool:
    """Bring a running HAProxy to the database's routes; False when none is running.

    ``bind``: how it listens, for the process that runs it; None keeps what the current
    configuration says. Files are always written, so an HAProxy started later comes up right.
    A change in backends or servers is a seamless reload; anything else a runtime change.
    """
    listed = await web_nodes(svc)
    async with locked(files):
        nodes = await latest_nodes(svc, files=files, nodes=listed)
        stamp_listing(files, nodes)
        state = await router_state(svc, nodes=nodes)
        config, tls = await router_config(svc, files=files, state=state, bind=bind)
        crt_list = tls.crt_list if tls is not None else None
        master = MasterCLI(files.master)
        if not await master.alive():
            await write_files(files, config=config, hosts=state.hosts, crt_list=crt_list)
            return False
        api = RuntimeAPI(files.api)
        await apply_to_running(
            files, api, master, config=config, hosts=state.hosts, crt_list=crt_list
        )
        return True


async def router_config(
    svc: Services, *, files: RouterFiles, state: RouterState, bind: str | None
) -> tuple[str, TLS | None]:
    """HAProxy's configuration for ``state``, and how it serves HTTPS (None: it does not).

    ``bind`` given: this process runs the router, and its settings say how it listens
    (``CLONEBOT_ROUTER_TLS_BIND``, the wildcard, strict SNI). None: as the current
    configuration says, where there is one; the certificates are the database's either way.
    Call it holding the router's lock: it writes the certificates' folder.
    """
    settings, own = svc.settings, bind is not None
    tls_bind: str | None = settings.router_tls_bind
    strict = settings.tls_strict_sni
    if bind is None:
        current = await asyncio.to_thread(_read, files.config)
        bind = bind_of(current) or settings.router_bind
        if current:
            tls_bind, strict = tls_of(current) or (None, False)
    tls = None
    if tls_bind is not None:
        tls = await router_tls(svc, files=files, bind=tls_bind, strict_sni=strict, own=own)
    # the redirect and HSTS maps the configuration names, for HAProxy to read them with the
    # crt-list it reads: a domain is redirected once its own certificate is served
    await write_https_maps(svc, files=files, listed=tls.crt_list if tls is not None else None)
    return render_config(files=files, bind=bind, backends=state.backends, tls=tls), tls


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""

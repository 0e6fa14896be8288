"""Docker Swarm stacks as environments: listed, cloned and deleted through a manager's engine.

A stack (``docker stack deploy``) is its services labelled ``com.docker.stack.namespace``;
each service is a layer, each of its running tasks a node. Its clone is the same services
under the clone's stack name: the same images and specs (replicas, placement, configs and
secrets by reference, resources), on overlay networks of its own, published ports moved to
free ones. A stateful service (one with a volume) must be pinned to a node by a placement
constraint: its volume is on that node, whose engine clonebot must drive (``engine add``),
since only that engine can pause its task (no freeze through a manager). The volume is
copied there the way a container's is (pre-copy while it runs, final pass during a short
pause guarded by a watchdog on that engine), and the clone is pinned to the same node.

No IPVS on some kernels (this one's): service VIPs and the routing mesh need it; stacks used
here set ``endpoint_mode: dnsrr`` and publish ports in ``host`` mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from services.cloning import CloneResult
from services.context import Services
from services.docker import JSON, DockerClient
from services.environments import (
    CLONED_FROM,
    JOB,
    OWNER,
    STACK,
    Environment,
    Mount,
    Node,
    _layer,
)
from services.errors import (
    BadRequest,
    ClonebotError,
    CloneFailed,
    DockerFailed,
    FreezeTimeout,
    NameTaken,
    NotAClone,
)
from services.freeze import pause
from services.ledger import list_services, remove_job_resources
from services.planning import PortRemap
from services.progress import EventSink, StepDone, StepStarted, Warned, step
from services.settings import Settings
from services.volumes import FinalPass, copy_helper, pre_copy
from services.watchdog import guarded

log = logging.getLogger(__name__)

SERVICE_ID = "com.docker.swarm.service.id"
CONVERGE_S = 90.0  # the clone's tasks running, each service as many as its source's
_REMOVE_S = 60.0
_PORTS = range(20000, 32768)  # a clone's published ports are chosen here
_VXLAN_IDS = "com.docker.network.driver.overlay.vxlanid_list"
_PINNED = re.compile(r"^node\.(hostname|id)\s*==\s*(\S+)$")


async def list_stacks(docker: DockerClient) -> list[Environment]:
    """The stacks on this engine's Swarm, by name; none when it is no Swarm manager."""
    services = await list_services(docker, labels=[STACK])
    if not services:
        return []
    tasks = await _running_tasks(docker)
    by_stack: dict[str, list[JSON]] = defaultdict(list)
    for service in services:
        by_stack[service["Spec"]["Labels"][STACK]].append(service)
    return [stack_environment(name, found, tasks) for name, found in sorted(by_stack.items())]


def same_stacks(envs: list[Environment]) -> list[Environment]:
    """``envs`` without a stack seen again through another manager of its Swarm (the same
    services, by ID): the first engine's kept."""
    seen: set[frozenset[str]] = set()
    kept = []
    for env in envs:
        if env.kind == "stack":
            ids = frozenset(str(n.attrs["Service"]["ID"]) for n in env.nodes)
            if ids in seen:
                continue
            seen.add(ids)
        kept.append(env)
    return kept


async def get_stack(docker: DockerClient, name: str) -> Environment | None:
    return next((s for s in await list_stacks(docker) if s.name == name), None)


async def _running_tasks(docker: DockerClient) -> dict[str, list[JSON]]:
    """The tasks meant to run, by service ID."""
    by_service: dict[str, list[JSON]] = defaultdict(list)
    for task in await docker.running_tasks():
        by_service[task["ServiceID"]].append(task)
    return by_service


def stack_environment(name: str, services: list[JSON], tasks: dict[str, list[JSON]]) -> Environment:
    layers = []
    for service in sorted(services, key=lambda s: str(s["Spec"]["Name"])):
        short = _short(name, service["Spec"]["Name"])
        found = sorted(tasks.get(service["ID"], []), key=lambda t: int(t.get("Slot") or 0))
        nodes = [_task_node(service, short, t) for t in found] or [_task_node(service, short, {})]
        layers.append(_layer(short, nodes))
    return Environment(name=name, layers=tuple(layers), kind="stack")


def _short(stack: str, service_name: str) -> str:
    return service_name.removeprefix(f"{stack}_")


def _task_node(service: JSON, short: str, task: JSON) -> Node:
    """A task as a node; a service with no task as one node with no state ("no task")."""
    spec = service["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    status = task.get("Status") or {}
    cid = (status.get("ContainerStatus") or {}).get("ContainerID") or task.get("ID") or ""
    slot = int(task.get("Slot") or 1)
    return Node(
        id=cid or service["ID"],
        name=f"{spec['Name']}.{slot}",
        layer=short,
        number=slot,
        state=str(status.get("State") or "no task"),
        image_id=str(container["Image"]),
        labels={**(container.get("Labels") or {}), **(spec.get("Labels") or {})},
        mounts=tuple(_mount(m) for m in container.get("Mounts") or []),
        attrs={"Service": service, "Task": task},
    )


def _mount(doc: JSON) -> Mount:
    return Mount(
        kind=str(doc.get("Type", "volume")),
        source=str(doc.get("Source") or ""),
        destination=str(doc["Target"]),
        read_write=not doc.get("ReadOnly", False),
    )


class NodeFreezeRecorder(Protocol):
    async def __call__(self, frozen: dict[str, str], *, engine: str | None = None) -> None: ...


# -- cloning --------------------------------------------------------------------------------


@dataclass
class _Made:
    """What a stack's clone made so far, removed newest first should it fail."""

    manager: DockerClient
    services: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    volumes: list[tuple[DockerClient, str]] = field(default_factory=list)

    async def rollback(self, job: str, engines: list[DockerClient]) -> None:
        """What was made removed; then whatever still carries the job's label on the manager
        and the nodes' engines (made, but its answer lost or the call cancelled)."""
        for ref in reversed(self.services):
            await _quietly(self.manager.remove_service(ref))
        await _gone(self.manager, self.networks)
        for docker, volume in reversed(self.volumes):
            await _removed_volume(docker, volume)
        for docker in [self.manager, *engines]:
            try:
                await remove_job_resources(docker, job)
            except ClonebotError as exc:  # the later sweep of remains takes it
                log.warning("stack clone rollback: %s", exc.message)


async def _quietly(call: Awaitable[None]) -> None:
    try:
        await call
    except ClonebotError as exc:
        log.warning("stack clone rollback: %s", exc.message)


@dataclass(frozen=True)
class _Pinned:
    """A stateful service's node, and the engine clonebot reaches it by."""

    service: JSON
    node: str  # its ID
    engine: str
    docker: DockerClient


async def clone_stack(
    svc: Services,
    *,
    engine: str,
    source: str,
    name: str,
    job: str | None = None,
    owner: str | None = None,
    emit: EventSink,
    on_freeze: NodeFreezeRecorder | None = None,
) -> CloneResult:
    """Clone stack ``source`` on the Swarm whose manager is ``engine`` as stack ``name``;
    on any failure remove all it made and raise ``CloneFailed``. ``on_freeze`` is told which
    tasks are about to be paused, on which engine, before they are (and ``{}`` once they run
    again): recovery resumes them should clonebot die meanwhile."""
    job = job or secrets.token_hex(6)
    began = time.monotonic()
    manager = svc.on(engine).docker
    services = await manager.list_services(labels=[f"{STACK}={source}"])
    if not services:
        raise BadRequest(f"no Swarm stack named {source!r} on engine {engine}")
    if await manager.list_services(labels=[f"{STACK}={name}"]):
        raise NameTaken(name)
    _refuse_binds(services)
    pinned = await _pinned(svc, manager, services)
    made = _Made(manager)
    labels = {STACK: name, JOB: job, CLONED_FROM: source} | ({OWNER: owner} if owner else {})
    current = "networks"
    try:
        networks = await _clone_networks(manager, services, source, name, labels, made)
        current = "copy"
        freeze_ms = 0
        for pin in pinned.values():
            frozen = await _copy_volumes(svc, pin, source, name, job, made, emit, on_freeze)
            freeze_ms = max(freeze_ms, frozen)
        current = "create"
        ports: list[PortRemap] = []
        used = await _published_ports(manager)
        async with step(emit, "create", name):
            for service in services:
                spec = clone_spec(service, source, name, labels, networks, used, ports)
                made.services.append(await manager.create_service(spec))
        current = "start"
        async with step(emit, "start", name):
            await _converged(manager, made.services)
    except (Exception, asyncio.CancelledError) as exc:
        await asyncio.shield(made.rollback(job, [p.docker for p in pinned.values()]))
        if isinstance(exc, asyncio.CancelledError):
            raise
        cause = exc.message if isinstance(exc, ClonebotError) else f"{type(exc).__name__}: {exc}"
        raise CloneFailed(step=current, cause=cause) from exc
    return CloneResult(
        job=job,
        environment=name,
        source=source,
        state="succeeded",
        freeze_ms=freeze_ms,
        nodes=[f"{name}_{_short(source, s['Spec']['Name'])}" for s in services],
        ports=ports,
        elapsed_ms=int((time.monotonic() - began) * 1000),
    )


def _refuse_binds(services: list[JSON]) -> None:
    for service in services:
        container = service["Spec"]["TaskTemplate"]["ContainerSpec"]
        for mount in container.get("Mounts") or []:
            if mount.get("Type") == "bind":
                raise BadRequest(
                    f"service {service['Spec']['Name']} mounts host directory "
                    f"{mount.get('Source')}: a stack's host directories are not cloned yet"
                )


async def _pinned(svc: Services, manager: DockerClient, services: list[JSON]) -> dict[str, _Pinned]:
    """Each stateful service's node (by its placement constraint) and that node's engine;
    a refusal naming the service when it is not pinned or clonebot does not drive the node."""
    nodes = await manager.list_nodes()
    by_name = {n["Description"]["Hostname"]: n["ID"] for n in nodes}
    engines = await _node_engines(svc)
    found = {}
    for service in services:
        spec = service["Spec"]
        mounts = spec["TaskTemplate"]["ContainerSpec"].get("Mounts") or []
        if not any(m.get("Type", "volume") == "volume" for m in mounts):
            continue
        constraints = (spec["TaskTemplate"].get("Placement") or {}).get("Constraints") or []
        node = None
        for constraint in constraints:
            if match := _PINNED.match(constraint.strip()):
                node = by_name.get(match[2]) if match[1] == "hostname" else match[2]
        if node is None:
            raise BadRequest(
                f"service {spec['Name']} has a volume but no node.hostname== placement "
                "constraint: its data is on whichever node ran it, pin it to one"
            )
        if node not in engines:
            raise BadRequest(
                f"service {spec['Name']} is pinned to node {node[:12]}, whose engine clonebot "
                "does not drive: add it (`clonebot engine add`) to copy its volume"
            )
        engine = engines[node]
        found[service["ID"]] = _Pinned(service, node, engine, svc.on(engine).docker)
    return found


async def _node_engines(svc: Services) -> dict[str, str]:
    """The fleet's engines by the Swarm node ID each is (those that answer)."""

    async def node_id(engine: str) -> str:
        async with asyncio.timeout(5):
            info = await svc.on(engine).docker.info()
        return str((info.get("Swarm") or {}).get("NodeID") or "")

    names = svc.fleet.names
    ids = await asyncio.gather(*(node_id(n) for n in names), return_exceptions=True)
    return {i: n for n, i in zip(names, ids, strict=True) if isinstance(i, str) and i}


async def _clone_networks(
    manager: DockerClient,
    services: list[JSON],
    source: str,
    name: str,
    labels: dict[str, str],
    made: _Made,
) -> dict[str, str]:
    """The stack's own networks made again under the clone's name: old ID → new ID. Others
    (an external network) are joined as they are."""
    ids = {n["Target"] for s in services for n in s["Spec"]["TaskTemplate"].get("Networks") or []}
    renamed = {}
    for ref in sorted(ids):
        net = await manager.inspect_network(ref)
        if net is None or (net.get("Labels") or {}).get(STACK) != source:
            continue
        config = {
            "Name": f"{name}_{_short(source, net['Name'])}",
            "Driver": net.get("Driver") or "overlay",
            "Attachable": bool(net.get("Attachable")),
            "Internal": bool(net.get("Internal")),
            "EnableIPv6": bool(net.get("EnableIPv6")),
            # not the overlay's VXLAN IDs: the source's, which Swarm would not give twice
            "Options": {k: v for k, v in (net.get("Options") or {}).items() if k != _VXLAN_IDS},
            "Labels": {**(net.get("Labels") or {}), **labels},
            "CheckDuplicate": True,
        }
        new = await manager.create_network(config)
        made.networks.append(new)
        renamed[ref] = new
    return renamed


async def _copy_volumes(
    svc: Services,
    pin: _Pinned,
    source: str,
    name: str,
    job: str,
    made: _Made,
    emit: EventSink,
    on_freeze: NodeFreezeRecorder | None,
    *,
    suffix: str = "",
) -> int:
    """The service's volumes copied on its node's engine while it runs, then the changes
    during a pause of its tasks there, guarded by a watchdog on that engine, into new volumes
    named after the clone (and ``suffix``). The pause's length in ms."""
    docker, spec = pin.docker, pin.service["Spec"]
    short = _short(source, spec["Name"])
    mounts = [
        m
        for m in spec["TaskTemplate"]["ContainerSpec"].get("Mounts") or []
        if m.get("Type", "volume") == "volume"
    ]
    pairs = []
    for mount in mounts:
        volume = f"{name}_{_short(source, str(mount['Source']))}{suffix}"
        if await docker.inspect_volume(volume) is not None:  # creating it would return it
            raise NameTaken(name, f"volume {volume} on engine {pin.engine}")
        await docker.create_volume(name=volume, labels={STACK: name, JOB: job})
        made.volumes.append((docker, volume))
        pairs.append((str(mount["Source"]), volume))
    settings = svc.settings
    helper = f"{name}-copy-{short}"
    async with copy_helper(
        docker, image=settings.helper_image, name=helper, pairs=pairs, labels={JOB: job}
    ) as cid:
        async with step(emit, "pre-copy", short):
            await pre_copy(docker, helper=cid, count=len(pairs), on_bytes=lambda _: None)
        async with FinalPass(docker, helper=cid, count=len(pairs)) as final:
            return await _paused_for(docker, settings, pin, job, final, emit, on_freeze)


async def _paused_for(
    docker: DockerClient,
    settings: Settings,
    pin: _Pinned,
    job: str,
    final: FinalPass,
    emit: EventSink,
    on_freeze: NodeFreezeRecorder | None,
) -> int:
    """The service's running tasks on its node paused while the final pass copies what changed
    since, then resumed whatever happens; how long they were paused, in ms."""
    running = await docker.list_containers(labels=[f"{SERVICE_ID}={pin.service['ID']}"])
    tasks = [c["Id"] for c in running if c.get("State") == "running"]
    name = pin.service["Spec"]["Name"]
    how = dict.fromkeys(tasks, "paused")
    if on_freeze is not None:
        await on_freeze(how, engine=pin.engine)
    emit(StepStarted("freeze", name))
    watch = guarded(
        docker, image=settings.helper_image, how=how,
        timeout_s=settings.freeze_timeout_s, labels={JOB: job},
    )  # fmt: skip
    async with watch as unguarded:
        if unguarded is not None:
            emit(Warned(f"no watchdog guards the freeze of {name} on engine {pin.engine} "
                        f"({unguarded})"))  # fmt: skip
        began = time.monotonic()
        paused: list[str] = []
        try:
            for cid in tasks:
                paused.append(cid)  # before the call: its answer may be lost, the pause done
                await pause(docker, cid)
            async with asyncio.timeout(settings.freeze_timeout_s):
                await final.fire()
        except TimeoutError:
            raise FreezeTimeout(
                f"the final copy pass of {name} took over {settings.freeze_timeout_s:g} s "
                "(CLONEBOT_FREEZE_TIMEOUT); it was resumed"
            ) from None
        finally:
            if await asyncio.shield(_resume(docker, paused)) and on_freeze is not None:
                with contextlib.suppress(Exception):  # the job's end clears its record too
                    await on_freeze({}, engine=pin.engine)
        elapsed = int((time.monotonic() - began) * 1000)
    emit(StepDone("freeze", name, elapsed))
    return elapsed


async def _resume(docker: DockerClient, paused: list[str]) -> bool:
    """Every task paused resumed, each tried for a while; whether all were (an engine that
    never answers: the watchdog, which clonebot then cannot remove, resumes them at its
    deadline, and recovery after that by the job's record)."""
    done = True
    for cid in paused:
        for attempt in range(_RESUME_TRIES):
            try:
                await docker.unpause_container(cid)
                break
            except ClonebotError as exc:
                if "is not paused" in exc.message or getattr(exc, "status", 0) in (404, 409):
                    break  # never paused (its pause failed), or gone
                log.warning("resume %s (try %d): %s", cid[:12], attempt + 1, exc.message)
                await asyncio.sleep(1)
        else:
            done = False
    return done


_RESUME_TRIES = 20


async def _published_ports(manager: DockerClient) -> set[int]:
    """The host ports the Swarm's services publish (a clone's are chosen among the others)."""
    used = set()
    for service in await manager.list_services(labels=[]):
        endpoint = (service.get("Endpoint") or {}).get("Ports") or []
        asked = (service["Spec"].get("EndpointSpec") or {}).get("Ports") or []
        used |= {int(p["PublishedPort"]) for p in [*endpoint, *asked] if p.get("PublishedPort")}
    return used


def clone_spec(
    service: JSON,
    source: str,
    name: str,
    labels: dict[str, str],
    networks: dict[str, str],
    used: set[int],
    ports: list[PortRemap],
) -> JSON:
    spec: JSON = copy.deepcopy(service["Spec"])
    short = _short(source, spec["Name"])
    spec["Name"] = f"{name}_{short}"
    spec["Labels"] = {**(spec.get("Labels") or {}), **labels}
    template = spec["TaskTemplate"]
    container = template["ContainerSpec"]
    container["Labels"] = {**(container.get("Labels") or {}), STACK: name}
    for mount in container.get("Mounts") or []:
        if mount.get("Type", "volume") == "volume" and mount.get("Source"):
            mount["Source"] = f"{name}_{_short(source, str(mount['Source']))}"
            volume_labels = (mount.get("VolumeOptions") or {}).get("Labels")
            if volume_labels and STACK in volume_labels:
                volume_labels[STACK] = name
    for attached in (template.get("Networks") or [], spec.get("Networks") or []):
        for net in attached:
            if net["Target"] in networks:
                net["Target"] = networks[net["Target"]]
            else:  # a network not the stack's (external): the source's aliases stay its own,
                net.pop("Aliases", None)  # else the source's tasks would reach the clone's
    asleep = str(spec["Labels"].pop(ASLEEP, ""))
    replicated = (spec.get("Mode") or {}).get("Replicated")
    if asleep.isdigit() and replicated is not None:  # a clone of a clone asleep: as it was
        replicated["Replicas"] = int(asleep)
    for port in (spec.get("EndpointSpec") or {}).get("Ports") or []:
        if port.get("PublishedPort"):
            old = int(port["PublishedPort"])
            new = next(p for p in _PORTS if p not in used)
            used.add(new)
            port["PublishedPort"] = new
            key = f"{port.get('TargetPort')}/{port.get('Protocol', 'tcp')}"
            ports.append(PortRemap(spec["Name"], key, str(old), str(new)))
    return spec


async def _converged(manager: DockerClient, services: list[str]) -> None:
    """Every service's tasks running, as many as it wants (no more: a service scaled down
    stops its extra ones); else why not, from its tasks."""
    deadline = time.monotonic() + CONVERGE_S
    while True:
        pending = []
        for ref in services:
            service = await manager.inspect_service(ref)
            if service is None:
                raise DockerFailed(f"service {ref} is gone")
            replicated = (service["Spec"].get("Mode") or {}).get("Replicated")
            tasks = await manager.list_tasks(service=ref)
            running = [t for t in tasks if (t.get("Status") or {}).get("State") == "running"]
            # a global service: one task per node that may run it, at least one
            wanted = replicated.get("Replicas", 1) if replicated is not None else len(running) or 1
            if len(running) < wanted:
                pending.append((service["Spec"]["Name"], _why_not(tasks)))
            elif len(running) > wanted:  # scaled down: the extra ones still stopping
                pending.append((service["Spec"]["Name"], f"{len(running)} tasks still run"))
        if not pending:
            return
        if time.monotonic() > deadline:
            what = "; ".join(f"{n}: {e or 'not running'}" for n, e in pending)
            raise DockerFailed(f"the services did not settle in {CONVERGE_S:g} s: {what}")
        await asyncio.sleep(0.5)


def _why_not(tasks: list[JSON]) -> str:
    """The latest task's state and why, in Swarm's words."""
    if not tasks:
        return "no task"
    latest = max(tasks, key=lambda t: str(t.get("UpdatedAt") or ""))
    status = latest.get("Status") or {}
    said = [str(status.get(k)) for k in ("State", "Message", "Err") if status.get(k)]
    return ": ".join(said) or "not running"


# -- refreshing -----------------------------------------------------------------------------


async def refresh_stack(
    svc: Services,
    *,
    engine: str,
    name: str,
    job: str,
    emit: EventSink,
    on_freeze: NodeFreezeRecorder | None = None,
) -> CloneResult:
    """A stack's clone given its source's data again: each stateful service's volumes copied
    anew from the source's (as a clone copies them) into new volumes, then the clone's service
    moved onto them (Swarm restarts its task) and its old volumes removed. Should anything
    fail, the new volumes go and the clone keeps its data and runs as before."""
    began = time.monotonic()
    manager = svc.on(engine).docker
    clones = await _clone_services(manager, name, verb="refresh")
    source = str((clones[0]["Spec"].get("Labels") or {}).get(CLONED_FROM, ""))
    sources = await manager.list_services(labels=[f"{STACK}={source}"])
    if not sources:
        raise BadRequest(f"{name}'s source, stack {source}, is not on engine {engine}")
    pinned = await _pinned(svc, manager, sources)
    by_name = {str(c["Spec"]["Name"]): c for c in clones}
    suffix = f"-r{job[:6]}"
    made = _Made(manager)
    moved: list[tuple[JSON, DockerClient, list[str]]] = []  # service as it was, engine, volumes
    freeze_ms = 0
    try:
        for pin in pinned.values():
            clone = by_name.get(f"{name}_{_short(source, pin.service['Spec']['Name'])}")
            if clone is None:
                raise BadRequest(f"{name} has no service for {pin.service['Spec']['Name']}")
            frozen = await _copy_volumes(
                svc, pin, source, name, job, made, emit, on_freeze, suffix=suffix
            )
            freeze_ms = max(freeze_ms, frozen)
            new = {  # by the path it is mounted at: the name the copy gave it
                str(m["Target"]): f"{name}_{_short(source, str(m['Source']))}{suffix}"
                for m in pin.service["Spec"]["TaskTemplate"]["ContainerSpec"].get("Mounts") or []
                if m.get("Type", "volume") == "volume"
            }
            spec = copy.deepcopy(clone["Spec"])
            old = []
            for mount in spec["TaskTemplate"]["ContainerSpec"].get("Mounts") or []:
                if str(mount.get("Target")) in new and mount.get("Type", "volume") == "volume":
                    old.append(str(mount["Source"]))
                    mount["Source"] = new[str(mount["Target"])]
            async with step(emit, "start", str(spec["Name"])):
                await manager.update_service(clone["ID"], version=_version(clone), spec=spec)
                moved.append((clone, pin.docker, old))
                await _converged(manager, [clone["ID"]])
    except (Exception, asyncio.CancelledError) as exc:
        await asyncio.shield(_undo_refresh(manager, moved, made))
        if isinstance(exc, asyncio.CancelledError):
            raise
        cause = exc.message if isinstance(exc, ClonebotError) else f"{type(exc).__name__}: {exc}"
        raise CloneFailed(step="refresh", cause=cause) from exc
    for clone, docker, old in moved:  # the clone runs on its new data: the old goes
        for volume in old:
            await _removed_volume(docker, volume, service=clone["ID"])
    result = _stack_result(name, job, clones, began, started=True)
    return replace(result, source=source, freeze_ms=freeze_ms)


async def _undo_refresh(
    manager: DockerClient,
    moved: list[tuple[JSON, DockerClient, list[str]]],
    made: _Made,
) -> None:
    """The clone's services back on their own volumes, then the new volumes removed."""
    for clone, _, _ in reversed(moved):
        try:
            now = await manager.inspect_service(clone["ID"])
            if now is not None:
                await manager.update_service(clone["ID"], version=_version(now), spec=clone["Spec"])
        except ClonebotError as exc:
            log.warning("refresh rollback: %s", exc.message)
    for docker, volume in reversed(made.volumes):
        await _removed_volume(docker, volume)


# -- sleeping -------------------------------------------------------------------------------


async def stop_stack(svc: Services, *, engine: str, name: str, job: str) -> CloneResult:
    """A stack's clone asleep: each service scaled to no task, its replicas kept in a label
    for ``start_stack``; its volumes and networks stay."""
    began = time.monotonic()
    manager = svc.on(engine).docker
    services = await _clone_services(manager, name, verb="stop")
    for service in services:
        spec = copy.deepcopy(service["Spec"])
        replicated = _replicated(spec)
        if replicated.get("Replicas", 1) == 0:
            continue  # asleep already (a stop cut short, tried again)
        spec["Labels"] = {**(spec.get("Labels") or {}), ASLEEP: str(replicated.get("Replicas", 1))}
        replicated["Replicas"] = 0
        await manager.update_service(service["ID"], version=_version(service), spec=spec)
    await _converged(manager, [s["ID"] for s in services])
    return _stack_result(name, job, services, began, started=False)


async def start_stack(svc: Services, *, engine: str, name: str, job: str) -> CloneResult:
    """A stack's clone awake again: each service back to its replicas, once they run."""
    began = time.monotonic()
    manager = svc.on(engine).docker
    services = await _clone_services(manager, name, verb="start")
    for service in services:
        spec = copy.deepcopy(service["Spec"])
        labels = dict(spec.get("Labels") or {})
        if ASLEEP not in labels:
            continue
        _replicated(spec)["Replicas"] = int(labels.pop(ASLEEP))
        spec["Labels"] = labels
        await manager.update_service(service["ID"], version=_version(service), spec=spec)
    await _converged(manager, [s["ID"] for s in services])
    return _stack_result(name, job, services, began, started=True)


ASLEEP = "clonebot.asleep.replicas"  # a stack clone's service asleep: the replicas it had


async def _clone_services(manager: DockerClient, name: str, *, verb: str) -> list[JSON]:
    services = await manager.list_services(labels=[f"{STACK}={name}"])
    if not services:
        raise BadRequest(f"no Swarm stack named {name!r}")
    if not all(CLONED_FROM in (s["Spec"].get("Labels") or {}) for s in services):
        raise NotAClone(name, verb)
    for service in services:
        if "Replicated" not in (service["Spec"].get("Mode") or {}):
            raise BadRequest(
                f"service {service['Spec']['Name']} runs on every node (global mode): "
                f"a stack with one cannot {verb} yet"
            )
    return services


def _replicated(spec: JSON) -> JSON:
    replicated: JSON = spec["Mode"]["Replicated"]
    return replicated


def _version(service: JSON) -> int:
    return int((service.get("Version") or {}).get("Index", 0))


def _stack_result(
    name: str, job: str, services: list[JSON], began: float, *, started: bool
) -> CloneResult:
    return CloneResult(
        job=job,
        environment=name,
        source=str((services[0]["Spec"].get("Labels") or {}).get(CLONED_FROM, "")),
        state="succeeded",
        started=started,
        nodes=[str(s["Spec"]["Name"]) for s in services],
        elapsed_ms=int((time.monotonic() - began) * 1000),
    )


# -- deleting -------------------------------------------------------------------------------


async def delete_stack(svc: Services, *, engine: str, name: str) -> None:
    """A stack's services, then its networks, then its volumes on every engine of the fleet
    that answers (a stateful service's are on its node's)."""
    manager = svc.on(engine).docker
    services = await manager.list_services(labels=[f"{STACK}={name}"])
    for service in services:
        await manager.remove_service(service["ID"])
    networks = await manager.api._query_json(
        "networks", params={"filters": f'{{"label": ["{STACK}={name}"]}}'}
    )
    await _gone(manager, [n["Id"] for n in networks])

    async def volumes_on(engine_name: str) -> None:
        docker = svc.on(engine_name).docker
        # clonebot's own (a job's label): not a volume another stack of that name left
        for volume in await docker.list_volumes(labels=[f"{STACK}={name}", JOB]):
            await _removed_volume(docker, str(volume["Name"]))

    await asyncio.gather(*(volumes_on(e) for e in svc.fleet.names), return_exceptions=True)


async def _gone(manager: DockerClient, networks: list[str]) -> None:
    """Networks removed, waiting for the tasks on them to go first."""
    deadline = time.monotonic() + _REMOVE_S
    for ref in reversed(networks):
        await _removed(functools.partial(manager.remove_network, ref), f"network {ref}", deadline)


async def _removed_volume(docker: DockerClient, volume: str, *, service: str = "") -> None:
    """A volume removed once no task holds it (a removed service's go within seconds). The
    ended tasks of ``service`` that still hold it are removed (Swarm keeps a few of a running
    service's, for their history; the last one stops a moment after Swarm says so)."""

    async def ended_holders() -> None:
        for task in await docker.list_containers(labels=[f"{SERVICE_ID}={service}"]):
            holds = any(m.get("Name") == volume for m in task.get("Mounts") or [])
            if holds and task.get("State") not in ("running", "paused", "restarting"):
                await _quietly(docker.remove_container(task["Id"]))

    await _removed(
        lambda: docker.remove_volume(volume),
        f"volume {volume}",
        time.monotonic() + _REMOVE_S,
        between=ended_holders if service else None,
    )


async def _removed(
    remove: Callable[[], Awaitable[None]],
    what: str,
    deadline: float,
    *,
    between: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """``remove`` tried until it is done, the thing is gone (404), or ``deadline`` passes
    (then it stays, said in the log); ``between`` the tries, what may free it."""
    while True:
        try:
            await remove()
            return
        except DockerFailed as exc:
            if exc.status == 404:
                return
            if time.monotonic() > deadline:
                log.warning("%s stays: %s", what, exc.message)
                return
        if between is not None:
            await between()
        await asyncio.sleep(0.5)

"""Environments as Docker shows them: Compose projects made of layers made of nodes."""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from services.docker import JSON, DockerClient, gather_all
from services.errors import EnvironmentNotFound
from services.fleet import LOCAL

PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
NUMBER = "com.docker.compose.container-number"
ONEOFF = "com.docker.compose.oneoff"
SCALING = "clonebot.scaling"
HTTP_PORT = "clonebot.http.port"
OWNER = "clonebot.owner"
CLONED_FROM = "clonebot.cloned-from"
JOB = "clonebot.job"
VOLUME_POLICY = "clonebot.volume."
BIND_POLICY = "clonebot.bind."  # + a container path: what a clone does with that host directory
COMPOSE_VOLUME = "com.docker.compose.volume"
STACK = "com.docker.stack.namespace"  # a Swarm stack's (services/swarm.py)

Scaling = Literal["stateful", "stateless"]
VolumePolicy = Literal["copy", "share", "empty"]
VOLUME_POLICIES: tuple[VolumePolicy, ...] = ("copy", "share", "empty")


@dataclass(frozen=True)
class Mount:
    kind: str  # "volume", "bind" or "tmpfs"
    source: str  # volume name or host path
    destination: str
    read_write: bool
    anonymous: bool = False


@dataclass(frozen=True)
class Node:
    """One container of a layer, with its full ``docker inspect`` document."""

    id: str
    name: str
    layer: str
    number: int
    state: str  # "running", "paused", "exited", "created", ...
    image_id: str
    labels: dict[str, str]
    mounts: tuple[Mount, ...]
    attrs: JSON = field(repr=False, compare=False)

    @property
    def volumes(self) -> tuple[Mount, ...]:
        return tuple(m for m in self.mounts if m.kind == "volume")

    @property
    def binds(self) -> tuple[Mount, ...]:
        """Host directories (or files) mounted into the node."""
        return tuple(m for m in self.mounts if m.kind == "bind")

    @property
    def networks(self) -> dict[str, JSON]:
        nets: dict[str, JSON] = self.attrs["NetworkSettings"].get("Networks") or {}
        return nets


@dataclass(frozen=True)
class Layer:
    name: str
    nodes: tuple[Node, ...]
    scaling: Scaling
    http_port: int | None
    volume_policies: dict[str, VolumePolicy]
    bind_policies: dict[str, VolumePolicy] = field(default_factory=dict)  # by container path
    label_errors: tuple[str, ...] = ()  # bad clonebot.bind.* labels: a clone is refused

    @property
    def master(self) -> Node:
        return self.nodes[0]

    def bind_policy(self, mount: Mount) -> VolumePolicy:
        return _bind_policy(self.bind_policies, mount)

    def policy_for(self, mount: Mount) -> VolumePolicy:
        """The policy of a volume, by its full name or its Compose short name."""
        for key in (mount.source, _short_volume_name(self, mount.source)):
            if key and key in self.volume_policies:
                return self.volume_policies[key]
        return "copy"


@dataclass(frozen=True)
class Environment:
    name: str
    layers: tuple[Layer, ...]
    engine: str = LOCAL  # the Docker engine it is on (services/fleet.py)
    # a Compose project, or a Swarm stack (services/swarm.py: its engine is a manager's)
    kind: Literal["compose", "stack"] = "compose"

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(node for layer in self.layers for node in layer.nodes)

    @property
    def owner(self) -> str | None:
        return next((n.labels[OWNER] for n in self.nodes if n.labels.get(OWNER)), None)

    @property
    def cloned_from(self) -> str | None:
        return next((n.labels[CLONED_FROM] for n in self.nodes if CLONED_FROM in n.labels), None)

    @property
    def web_layer(self) -> Layer | None:
        return next((layer for layer in self.layers if layer.http_port is not None), None)

    def layer(self, name: str) -> Layer:
        return next(layer for layer in self.layers if layer.name == name)


async def list_environments(docker: DockerClient) -> list[Environment]:
    """Every Compose project on the engine, as an environment, sorted by name."""
    summaries = await docker.list_containers(labels=[PROJECT])
    by_project: dict[str, list[JSON]] = defaultdict(list)
    for doc in await _inspected(docker, summaries):
        labels = doc["Config"].get("Labels") or {}
        if labels.get(ONEOFF, "False") != "True":
            by_project[labels[PROJECT]].append(doc)
    return [_environment(name, docs) for name, docs in sorted(by_project.items())]


async def get_environment(docker: DockerClient, name: str) -> Environment:
    summaries = await docker.list_containers(labels=[f"{PROJECT}={name}"])
    attrs = await _inspected(docker, summaries)
    docs = [d for d in attrs if (d["Config"].get("Labels") or {}).get(ONEOFF, "False") != "True"]
    if not docs:
        raise EnvironmentNotFound(name)
    return _environment(name, docs)


async def _inspected(docker: DockerClient, summaries: list[JSON]) -> list[JSON]:
    """The listed containers inspected; one removed since the listing (a job's helper, a
    clone rolled back) is left out rather than failing the whole listing."""
    found = await gather_all(*(docker.find_container(s["Id"]) for s in summaries))
    return [doc for doc in found if doc is not None]


@dataclass(frozen=True)
class Glimpse:
    """An environment as one container listing shows it, without inspecting its containers:
    enough to check a request in a few milliseconds (a swap must be quick)."""

    name: str
    owner: str | None
    cloned_from: str | None
    has_web_layer: bool
    engine: str = LOCAL


def glimpses_in(listed: dict[str, list[JSON]], names: Sequence[str]) -> list[Glimpse]:
    """The named environments from each engine's container summaries (one listing each), in
    order; ``EnvironmentNotFound`` names the first that is in none."""
    by_project: dict[str, list[dict[str, str]]] = defaultdict(list)
    engines: dict[str, str] = {}
    for engine, summaries in listed.items():
        for summary in summaries:
            labels = summary.get("Labels") or {}
            if labels.get(PROJECT) in names and labels.get(ONEOFF, "False") != "True":
                by_project[labels[PROJECT]].append(labels)
                engines[labels[PROJECT]] = engine
    glimpses = []
    for name in names:
        if not (labels := by_project.get(name)):
            raise EnvironmentNotFound(name)
        glimpses.append(
            Glimpse(
                name=name,
                owner=next((x[OWNER] for x in labels if x.get(OWNER)), None),
                cloned_from=next((x[CLONED_FROM] for x in labels if CLONED_FROM in x), None),
                has_web_layer=any(_int(x.get(HTTP_PORT), default=0) for x in labels),
                engine=engines[name],
            )
        )
    return glimpses


async def environment_exists(docker: DockerClient, name: str) -> bool:
    return bool(await docker.list_containers(labels=[f"{PROJECT}={name}"]))


def _environment(name: str, docs: list[JSON]) -> Environment:
    by_layer: dict[str, list[Node]] = defaultdict(list)
    for doc in docs:
        node = _node(doc)
        by_layer[node.layer].append(node)
    layers = tuple(_layer(lname, nodes) for lname, nodes in sorted(by_layer.items()))
    return Environment(name=name, layers=layers)


def _node(doc: JSON) -> Node:
    labels: dict[str, str] = doc["Config"].get("Labels") or {}
    return Node(
        id=doc["Id"],
        name=doc["Name"].lstrip("/"),
        layer=labels.get(SERVICE) or doc["Name"].lstrip("/"),
        number=_int(labels.get(NUMBER), default=1),
        state=doc["State"]["Status"],
        image_id=doc["Image"],
        labels=labels,
        mounts=tuple(_mount(m) for m in doc.get("Mounts") or []),
        attrs=doc,
    )


def _mount(doc: JSON) -> Mount:
    kind = doc.get("Type", "volume")
    source = doc.get("Name") if kind == "volume" else doc.get("Source", "")
    return Mount(
        kind=kind,
        source=source or "",
        destination=doc["Destination"],
        read_write=bool(doc.get("RW", True)),
        anonymous=kind == "volume" and _looks_anonymous(source or ""),
    )


def _layer(name: str, nodes: list[Node]) -> Layer:
    nodes.sort(key=lambda n: (n.number, n.name))
    labels: dict[str, str] = {}
    for node in reversed(nodes):  # the master's labels win
        labels.update(node.labels)
    policies: dict[str, VolumePolicy] = {}
    for key, value in labels.items():
        if key.startswith(VOLUME_POLICY) and value in VOLUME_POLICIES:
            policies[key.removeprefix(VOLUME_POLICY)] = value
    binds = {m.destination for node in nodes for m in node.binds}
    bind_policies, errors = _bind_policies(name, labels, binds)
    # a host directory to copy holds data like a volume does: the layer is snapshotted
    copies = any(_bind_policy(bind_policies, m) == "copy" for node in nodes for m in node.binds)
    scaling: Scaling = "stateful" if copies or any(node.volumes for node in nodes) else "stateless"
    if labels.get(SCALING) in ("stateful", "stateless"):
        scaling = "stateful" if labels[SCALING] == "stateful" else "stateless"
    port = _int(labels.get(HTTP_PORT), default=0) or None
    return Layer(name, tuple(nodes), scaling, port, policies, bind_policies, errors)


def _bind_policy(policies: dict[str, VolumePolicy], mount: Mount) -> VolumePolicy:
    """A host directory's policy: its label's, else ``copy`` when the node may write it (a
    database's data directory) and ``share`` when it is mounted read-only."""
    return policies.get(mount.destination) or ("copy" if mount.read_write else "share")


def _bind_policies(
    layer: str, labels: dict[str, str], binds: set[str]
) -> tuple[dict[str, VolumePolicy], tuple[str, ...]]:
    """The layer's ``clonebot.bind.<container path>`` labels, and what is wrong with the bad
    ones (labels are anyone's input: listing never fails on them, a clone is refused)."""
    policies: dict[str, VolumePolicy] = {}
    errors: list[str] = []
    for key, value in sorted(labels.items()):
        if not key.startswith(BIND_POLICY):
            continue
        path = bind_label_path(key.removeprefix(BIND_POLICY))
        policy = next((p for p in VOLUME_POLICIES if p == value), None)
        if policy is None:
            problem = f"its value must be copy, share or empty, not {value[:40]!r}"
        elif path is None:
            problem = "it must name an absolute container path, like clonebot.bind./var/lib/data"
        elif path not in binds:
            problem = f"layer {layer} mounts no host directory at {path}"
        else:
            policies[path] = policy
            continue
        errors.append(f"label {key[:120]!r} of layer {layer}: {problem}")
    return policies, tuple(errors)


def bind_label_path(text: str) -> str | None:
    """The container path a ``clonebot.bind.`` label names, or None when it is not a plain
    absolute path (relative, ``.``/``..`` parts, control characters)."""
    if not text.startswith("/") or len(text) > 4096 or not text.isprintable():
        return None
    parts = text.rstrip("/").split("/")[1:]
    if text != "/" and any(part in ("", ".", "..") for part in parts):
        return None
    return posixpath.normpath(text)


def _short_volume_name(layer: Layer, volume: str) -> str | None:
    project = layer.master.labels.get(PROJECT, "")
    for prefix in (f"{project}_", f"{project}-"):
        if project and volume.startswith(prefix):
            return volume.removeprefix(prefix)
    return None


def _looks_anonymous(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _int(value: Any, *, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default

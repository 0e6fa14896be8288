"""Planning a clone from the live source: what to create, copy and rewrite, before any change."""

from __future__ import annotations

import copy
import random
import secrets
from dataclasses import dataclass, field, replace

from services.binds import BIND_PATH, BindUnusable, HostKind, bind_volume_name, probe_host_paths
from services.docker import JSON, DockerClient
from services.engine_host import network_room, ports_in_use
from services.environments import (
    CLONED_FROM,
    HTTP_PORT,
    JOB,
    NUMBER,
    ONEOFF,
    OWNER,
    PROJECT,
    SCALING,
    SERVICE,
    Environment,
    Layer,
    Mount,
    Node,
    VolumePolicy,
    environment_exists,
    get_environment,
    list_environments,
)
from services.errors import (
    BadRequest,
    DockerFailed,
    NameTaken,
    NoNetworkRoom,
    NotAClone,
    NotEnoughDisk,
)
from services.job_locks import reserve_disk
from services.naming import NameRewriter, Rewrite, default_clone_name, node_name, twin_name
from services.naming import validate_name as check_name
from services.settings import Settings
from services.volumes import ensure_helper_image, free_disk, measure_volumes

PREDEFINED_NETWORKS = {"bridge", "host", "none", "default"}
COMPOSE_NETWORK = "com.docker.compose.network"
COMPOSE_VOLUME = "com.docker.compose.volume"


@dataclass(frozen=True)
class PortRemap:
    node: str
    container_port: str
    old: str
    new: str


@dataclass
class NetworkPlan:
    source: str
    name: str
    config: JSON


@dataclass
class VolumePlan:
    name: str
    labels: dict[str, str]
    source: str | None = None  # copied from this source volume during the freeze
    replica_of: str | None = None  # copied from this clone volume after the freeze
    bytes: int = 0  # data to copy, measured on the Docker host
    exists: bool = False  # a refresh reuses the clone's volumes


@dataclass
class NodePlan:
    name: str
    layer: str
    number: int
    source: Node
    config: JSON  # the container create body; "Image" is set for stateless nodes
    networks: list[tuple[str, list[str]]]  # (network, aliases); the first is joined at create
    stateful: bool


@dataclass
class ClonePlan:
    job: str
    source: Environment
    name: str
    snapshot: bool
    base_domain: str
    owner: str | None = None  # the clone's owner, written on its nodes' clonebot.owner label
    networks: list[NetworkPlan] = field(default_factory=list)
    volumes: list[VolumePlan] = field(default_factory=list)
    nodes: list[NodePlan] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)
    ports: list[PortRemap] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    twins: dict[str, str] = field(default_factory=dict)  # source network -> clone network
    copy_bytes: int = 0
    host_ports: set[int] = field(default_factory=set)  # chosen for this clone so far
    busy_ports: set[int] = field(default_factory=set)  # in use on the engine's host
    only_stateful: bool = False  # a refresh re-creates only the stateful layers
    in_place: bool = False  # a rename: the same volumes and host ports, nothing copied
    host_kinds: dict[str, HostKind] = field(default_factory=dict)  # host paths to copy, probed
    across: bool = False  # made on another engine than the source's
    publish_ip: str = ""  # across: the target engine's address, a web node's HTTP port's

    @property
    def layers(self) -> list[Layer]:
        layers = self.source.layers
        return [x for x in layers if x.scaling == "stateful" or not self.only_stateful]

    @property
    def stateful_layers(self) -> list[Layer]:
        return [layer for layer in self.source.layers if layer.scaling == "stateful"]

    def labels(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        labels = {PROJECT: self.name, JOB: self.job, CLONED_FROM: self.source.name}
        if self.in_place:  # renamed, not copied: still a clone of what it was a clone of
            del labels[CLONED_FROM]
            if self.source.cloned_from:
                labels[CLONED_FROM] = self.source.cloned_from
        return labels | (extra or {})


async def plan_clone(
    docker: DockerClient,
    settings: Settings,
    *,
    source: str,
    name: str | None = None,
    snapshot: bool = False,
    job: str | None = None,
    owner: str | None = None,
    target: DockerClient | None = None,
) -> ClonePlan:
    """Check the request and plan the clone; raise a ``Refused`` error before anything is made.

    ``target`` is the engine to make it on, when not the source's (``docker``): the source is
    read on its own, the names, address pools, host ports and disk checked on the target.
    """
    onto = target or docker
    if name is not None:
        check_name(name)
    env = await get_environment(docker, source)
    if name is None:
        name = default_clone_name(source, {e.name for e in await list_environments(onto)})
    elif await environment_exists(onto, name):
        raise NameTaken(name)
    plan = ClonePlan(job or secrets.token_hex(6), env, name, snapshot, settings.base_domain, owner)
    plan.across = onto is not docker
    if plan.across:
        plan.publish_ip = await onto.host_ip()
    _check_bind_labels(plan)
    await _plan_networks(docker, plan, target=onto)
    await _check_network_room(onto, plan)
    await _probe_binds(docker, settings, plan)
    volumes = _plan_volumes(plan, existing={})
    await _probe_host_ports(onto, settings, plan)
    await _plan_nodes_and_disk(docker, settings, plan, volumes, target=onto)
    return plan


async def plan_refresh(
    docker: DockerClient,
    settings: Settings,
    *,
    clone: Environment,
    source: str | None = None,
    job: str | None = None,
    target: DockerClient | None = None,
) -> ClonePlan:
    """Plan new stateful nodes for ``clone`` from its source, reusing its networks and volumes.

    ``docker`` is the source's engine, ``target`` the clone's when it is another."""
    if clone.cloned_from is None:
        raise NotAClone(clone.name, "refresh")
    onto = target or docker
    env = await get_environment(docker, source or clone.cloned_from)
    plan = ClonePlan(
        job or secrets.token_hex(6), env, clone.name, False, settings.base_domain, clone.owner
    )
    plan.only_stateful, plan.across = True, onto is not docker
    if plan.across:
        plan.publish_ip = await onto.host_ip()
    _check_bind_labels(plan)
    await _plan_networks(docker, plan, reuse=True, target=onto)
    await _probe_binds(docker, settings, plan)
    # the clone's copies of host directories are re-filled, under whatever name they have
    copies = {v["Name"] for v in await onto.list_volumes(labels=[BIND_PATH])}
    existing = {
        (node.layer, node.number, m.destination): m.source
        for node in clone.nodes
        for m in node.volumes
        if m.anonymous or m.source in copies
    }
    volumes = _plan_volumes(plan, existing=existing)
    for vol in plan.volumes:
        vol.exists = vol.exists or await onto.inspect_volume(vol.name) is not None
    await _probe_host_ports(onto, settings, plan)
    await _plan_nodes_and_disk(docker, settings, plan, volumes, target=onto)
    return plan


async def plan_rename(
    docker: DockerClient, settings: Settings, *, name: str, new_name: str, job: str | None = None
) -> ClonePlan:
    """Plan ``name``'s nodes and networks again under ``new_name``, on the same volumes.

    Docker cannot change a container's labels, and the labels are what make an environment:
    a rename re-creates every node, from an image of itself, with the same volumes and host
    ports; nothing is copied.
    """
    check_name(new_name)
    env = await get_environment(docker, name)
    if new_name == name or await environment_exists(docker, new_name):
        raise NameTaken(new_name)
    plan = ClonePlan(job or secrets.token_hex(6), env, new_name, False, settings.base_domain)
    plan.owner, plan.in_place = env.owner, True
    await _plan_networks(docker, plan)
    _plan_nodes(plan, volumes={})
    return plan


async def _plan_networks(
    docker: DockerClient,
    plan: ClonePlan,
    *,
    reuse: bool = False,
    target: DockerClient | None = None,
) -> None:
    names = sorted({net for node in plan.source.nodes for net in node.networks})
    for net in names:
        if net in PREDEFINED_NETWORKS:
            continue
        info = await docker.inspect_network(net)
        if info is None:
            continue
        labels = dict(info.get("Labels") or {})
        if plan.in_place and labels.get(PROJECT) != plan.source.name:
            plan.twins[net] = net  # not the environment's own: a renamed one stays on it
            continue
        twin = twin_name(name=net, source=plan.source.name, clone=plan.name)
        plan.twins[net] = twin
        if await (target or docker).inspect_network(twin) is not None:
            if reuse:
                continue
            raise NameTaken(plan.name)
        if PROJECT in labels:
            labels[PROJECT] = plan.name
        ipam = info.get("IPAM") or {}
        config = {
            "Name": twin,
            "Driver": info.get("Driver", "bridge"),
            "Options": info.get("Options") or {},
            "Internal": info.get("Internal", False),
            "Attachable": info.get("Attachable", False),
            "EnableIPv6": info.get("EnableIPv6", False),
            # subnets are not copied: the twin must not overlap its source
            "IPAM": {"Driver": ipam.get("Driver", "default"), "Options": ipam.get("Options")},
            "Labels": plan.labels(labels),
            "CheckDuplicate": True,
        }
        plan.networks.append(NetworkPlan(source=net, name=twin, config=config))


async def _check_network_room(docker: DockerClient, plan: ClonePlan) -> None:
    """Refuse a clone whose networks the engine's address pools cannot hold, before any is
    made (Docker's defaults hold about 30 bridge networks; each clone needs its source's)."""
    wanted = sum(1 for net in plan.networks if net.config["Driver"] == "bridge")
    if not wanted:
        return
    room = await network_room(docker)
    if room.free < wanted:
        raise NoNetworkRoom(wanted=wanted, free=room.free, total=room.total)


async def _probe_host_ports(docker: DockerClient, settings: Settings, plan: ClonePlan) -> None:
    """The host ports busy on the engine's host, when the clone publishes any."""
    published = any(
        bind.get("HostPort")
        for layer in plan.layers
        for node in layer.nodes
        for binds in (node.attrs["HostConfig"].get("PortBindings") or {}).values()
        for bind in binds or []
    ) or (plan.across and any(HTTP_PORT in n.labels for n in plan.source.nodes))
    if published:
        # claimed before the probe: a job ending during it lets its ports go, but its
        # containers may have come after the probe read the host
        claimed = set(_claimed)
        await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
        labels = {JOB: plan.job}
        found = await ports_in_use(docker, image=settings.helper_image, labels=labels)
        plan.busy_ports = claimed | found


async def _plan_nodes_and_disk(
    docker: DockerClient,
    settings: Settings,
    plan: ClonePlan,
    volumes: dict[tuple[str, str], VolumePlan],
    *,
    target: DockerClient | None = None,
) -> None:
    """``_plan_nodes`` (it claims the clone's host ports), then the disk check; the ports are
    let go if either fails: no job will hold them."""
    try:
        _plan_nodes(plan, volumes)
        if plan.across:
            _check_nothing_shared(plan)
        await _check_disk_for_binds(docker, settings, plan, target=target)
    except BaseException:
        release_ports(plan.job)
        raise


def _plan_volumes(
    plan: ClonePlan, *, existing: dict[tuple[str, int, str], str]
) -> dict[tuple[str, str], VolumePlan]:
    """Map (node id, mount destination) to the clone's volume for it.

    ``existing`` names the clone's anonymous volumes by (layer, number, destination) on refresh.
    """
    named: dict[str, VolumePlan] = {}
    mapping: dict[tuple[str, str], VolumePlan] = {}
    for layer in plan.layers:
        stateful = layer.scaling == "stateful"
        for index, node in enumerate(layer.nodes):
            mounts = layer.master.volumes if stateful else node.volumes
            for mount in mounts:
                policy = layer.policy_for(mount)
                if policy == "share":
                    continue
                copy_data = stateful and policy == "copy"
                if not mount.anonymous and mount.source in named:
                    vol = named[mount.source]
                else:
                    vol = _new_volume(plan, mount)
                    if (
                        mount.anonymous
                        and (key := (layer.name, node.number, mount.destination)) in existing
                    ):
                        vol.name, vol.exists = existing[key], True
                    if copy_data and (index == 0 or not mount.anonymous):
                        vol.source = mount.source
                    elif copy_data:
                        vol.replica_of = mapping[(layer.master.id, mount.destination)].name
                    if not mount.anonymous:
                        named[mount.source] = vol
                    plan.volumes.append(vol)
                mapping[(node.id, mount.destination)] = vol
            for mount in layer.master.binds if stateful else node.binds:
                key = (layer.name, node.number, mount.destination)
                if bind := _plan_bind(
                    plan, layer, mount, planned=named, existing=existing.get(key)
                ):
                    mapping[(node.id, mount.destination)] = bind
    return mapping


def _plan_bind(
    plan: ClonePlan,
    layer: Layer,
    mount: Mount,
    *,
    planned: dict[str, VolumePlan],
    existing: str | None,
) -> VolumePlan | None:
    """The clone's own volume for a source's host directory, or None where the clone shares
    the directory. ``planned`` holds the volumes planned so far: one per host directory,
    shared by the clone's nodes as the directory is by the source's."""
    policy = _bind_policy(plan, layer, mount)
    if policy == "share":
        if mount.read_write and mount.destination in layer.bind_policies:
            _warn(plan, f"{layer.name}: the host directory at {mount.destination} is shared "
                  "with the source, as its clonebot.bind label asks")  # fmt: skip
        return None
    key = f"{policy}:{mount.source}"  # never a volume's name: those do not hold a colon
    if key in planned:
        return planned[key]
    name = existing or bind_volume_name(
        clone=plan.name, layer=layer.name, destination=mount.destination, host_path=mount.source
    )
    vol = VolumePlan(name=name, labels=plan.labels({BIND_PATH: mount.destination}))
    if policy == "copy" and layer.scaling == "stateful":
        vol.source = mount.source  # copied like a volume, in the same freeze
    elif policy == "copy":
        path = mount.destination
        _warn(plan, f"{layer.name}: {path} is a host directory of a stateless layer: the clone "
              f"gets an empty volume there (label clonebot.bind.{path}=share to share it, or "
              "clonebot.scaling=stateful to copy it)")  # fmt: skip
    planned[key] = vol
    plan.volumes.append(vol)
    return vol


def _bind_policy(plan: ClonePlan, layer: Layer, mount: Mount) -> VolumePolicy:
    policy = layer.bind_policy(mount)
    if (
        policy == "copy"
        and mount.destination not in layer.bind_policies
        and plan.host_kinds.get(mount.source) == "special"
    ):
        return "share"  # a socket or device of the host (docker.sock) is a door, not data
    return policy


def _warn(plan: ClonePlan, warning: str) -> None:
    if warning not in plan.warnings:
        plan.warnings.append(warning)


def _check_bind_labels(plan: ClonePlan) -> None:
    errors = [error for layer in plan.layers for error in layer.label_errors]
    if errors:
        raise BadRequest(f"cannot clone {plan.source.name}: {'; '.join(errors[:5])}")


async def _probe_binds(docker: DockerClient, settings: Settings, plan: ClonePlan) -> None:
    """Look at every host directory the clone would copy; refuse, by path, one it cannot."""
    wanted: dict[str, tuple[Layer, Mount]] = {}
    for layer in plan.layers:
        for node in [layer.master] if layer.scaling == "stateful" else layer.nodes:
            for mount in node.binds:
                if layer.bind_policy(mount) == "copy":
                    wanted.setdefault(mount.source, (layer, mount))
    if not wanted:
        return
    where = {
        path: f"mounted at {m.destination} in layer {x.name}" for path, (x, m) in wanted.items()
    }
    await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
    plan.host_kinds = await probe_host_paths(
        docker, image=settings.helper_image, paths=where, labels={JOB: plan.job}
    )
    for path, kind in sorted(plan.host_kinds.items()):
        layer, mount = wanted[path]
        share = f"label the layer clonebot.bind.{mount.destination}=share to share it instead"
        if kind == "unreadable":
            reason = "it cannot be read on the Docker host"
        elif kind == "file":
            reason = f"it is a file, and a clone copies only host directories: {share}"
        elif kind == "special" and mount.destination in layer.bind_policies:
            reason = f"it is a socket or a device, not a directory: {share}"
        else:
            continue
        raise BindUnusable(path=path, where=where[path], reason=reason)
    plan.source = replace(plan.source, layers=tuple(_settled(plan, x) for x in plan.source.layers))


def _settled(plan: ClonePlan, layer: Layer) -> Layer:
    """A layer made stateful only by the host sockets or devices it mounts (docker.sock),
    which are shared, is stateless: its source is not frozen for them."""
    if layer.scaling != "stateful" or any(
        node.volumes or node.labels.get(SCALING) == "stateful" for node in layer.nodes
    ):
        return layer
    if any(_bind_policy(plan, layer, m) == "copy" for node in layer.nodes for m in node.binds):
        return layer
    return replace(layer, scaling="stateless")


def _new_volume(plan: ClonePlan, mount: Mount) -> VolumePlan:
    if mount.anonymous:
        return VolumePlan(name=secrets.token_hex(32), labels=plan.labels())
    name = twin_name(name=mount.source, source=plan.source.name, clone=plan.name)
    short = name.removeprefix(f"{plan.name}_")
    return VolumePlan(name=name, labels=plan.labels({COMPOSE_VOLUME: short}))


def _plan_nodes(plan: ClonePlan, volumes: dict[tuple[str, str], VolumePlan]) -> None:
    rewriter = NameRewriter(_name_replacements(plan))
    twins = plan.twins
    for layer in plan.layers:
        stateful = layer.scaling == "stateful"
        for node in layer.nodes:
            name = node_name(env=plan.name, layer=layer.name, number=node.number)
            mounts_from = layer.master if stateful and not plan.in_place else node
            config = _container_config(plan, node, name=name, mounts_from=mounts_from)
            wanted = mounts_from.volumes + mounts_from.binds
            config["HostConfig"]["Mounts"] += _mounts(node.id, wanted, volumes)
            env, rewrites = rewriter.rewrite_env(node=name, env=config.get("Env") or [])
            config["Env"] = env
            plan.rewrites += rewrites
            networks = _node_networks(plan, node, twins)
            if networks:
                config["HostConfig"]["NetworkMode"] = networks[0][0]
                config["NetworkingConfig"] = {
                    "EndpointsConfig": {networks[0][0]: {"Aliases": networks[0][1]}}
                }
            if not stateful:
                config["Image"] = node.image_id
            plan.nodes.append(
                NodePlan(name, layer.name, node.number, node, config, networks, stateful)
            )


def _check_nothing_shared(plan: ClonePlan) -> None:
    """A clone on another engine cannot share a volume or a host directory with its source:
    the name there would be another engine's (an empty volume made, or some other directory).
    The host's sockets and devices (docker.sock) are the target host's own, as on any host."""
    own = {v.name for v in plan.volumes}
    for node in plan.nodes:
        for mount in node.config["HostConfig"]["Mounts"]:
            kind, source = mount.get("Type"), mount.get("Source", "")
            if kind == "tmpfs" or (kind == "volume" and source in own):
                continue
            if kind == "bind" and plan.host_kinds.get(source) == "special":
                continue
            what = "volume" if kind == "volume" else "host directory"
            raise BadRequest(
                f"{node.layer} shares the {what} {source} (at {mount.get('Target')}) with "
                f"{plan.source.name}: a clone on another engine cannot share it; label it to be "
                "copied or left empty, or clone on the source's engine"
            )


def _name_replacements(plan: ClonePlan) -> dict[str, str]:
    src, dst = plan.source.name, plan.name
    out = {f"{src}.{plan.base_domain}": f"{dst}.{plan.base_domain}"}
    for node in plan.source.nodes:
        new = node_name(env=dst, layer=node.layer, number=node.number)
        for old in (
            node.name,
            f"{src}_{node.layer}_{node.number}",
            f"{src}-{node.layer}-{node.number}",
        ):
            out[old] = new
    return out


def _container_config(plan: ClonePlan, node: Node, *, name: str, mounts_from: Node) -> JSON:
    config: JSON = copy.deepcopy(node.attrs["Config"])
    host: JSON = copy.deepcopy(mounts_from.attrs["HostConfig"])
    if config.get("Hostname") == node.id[:12]:
        del config["Hostname"]  # Docker's default, the container's own short ID
    config["Labels"] = {
        **(config.get("Labels") or {}),
        **plan.labels({SERVICE: node.layer, NUMBER: str(node.number), ONEOFF: "False"}),
    }
    if plan.owner:
        # the clone is not the source's owner's: a record rebuilt from Docker must say so
        config["Labels"][OWNER] = plan.owner
    for key in ("Image", "Volumes"):
        config.pop(key, None)
    # host directories are mounted by _mounts: as binds where shared, else as the clone's volumes
    host["Binds"] = []
    host["Mounts"] = [m for m in host.get("Mounts") or [] if m.get("Type") == "tmpfs"]
    for key in ("Links", "VolumesFrom", "ContainerIDFile"):
        host.pop(key, None)
    if not plan.in_place:
        host["PortBindings"] = _remap_ports(plan, name, host.get("PortBindings") or {})
    if plan.across:
        _publish_http(plan, name, config, host)
    config["HostConfig"] = host
    return config


def _publish_http(plan: ClonePlan, name: str, config: JSON, host: JSON) -> None:
    """A web node made on another engine than the router's publishes its HTTP port on a host
    port there (unless it does already): the router reaches it at its engine's address, the
    one address it listens on (not every address of that host: the clone's site is reached
    through the router only)."""
    port = str(config["Labels"].get(HTTP_PORT, ""))
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return  # no web node, or a label the router refuses (and says so)
    key = f"{port}/tcp"
    if any(bind.get("HostPort") for bind in host["PortBindings"].get(key) or []):
        return
    chosen = _free_port(key, plan.host_ports | plan.busy_ports | _claimed.keys())
    plan.host_ports.add(chosen)
    _claimed[chosen] = plan.job
    host["PortBindings"][key] = [{"HostIp": plan.publish_ip, "HostPort": str(chosen)}]
    config["ExposedPorts"] = {**(config.get("ExposedPorts") or {}), key: {}}
    plan.ports.append(PortRemap(name, key, "", str(chosen)))  # no old one: newly published


def _mounts(
    node_id: str, wanted: tuple[Mount, ...], volumes: dict[tuple[str, str], VolumePlan]
) -> list[JSON]:
    """The volume and bind mounts of the clone of node ``node_id`` (a stateful node takes its
    master's). Where no clone volume is planned, the volume or host directory is shared with
    the source; a bind is a ``Mounts`` entry, so that a missing directory is an error, never
    made on the host."""
    mounts = []
    for mount in wanted:
        vol = volumes.get((node_id, mount.destination))
        mounts.append(
            {
                "Type": "bind" if mount.kind == "bind" and vol is None else "volume",
                "Source": vol.name if vol else mount.source,
                "Target": mount.destination,
                "ReadOnly": not mount.read_write,
            }
        )
    return mounts


def _node_networks(
    plan: ClonePlan, node: Node, twins: dict[str, str]
) -> list[tuple[str, list[str]]]:
    mode = node.attrs["HostConfig"].get("NetworkMode", "")
    ordered = sorted(node.networks, key=lambda net: net != mode)
    out = []
    for net in ordered:
        if net not in twins:
            continue
        aliases = [
            a
            for a in node.networks[net].get("Aliases") or []
            if a not in (node.name, node.id[:12]) and not node.id.startswith(a)
        ]
        if node.layer not in aliases:
            aliases.insert(0, node.layer)
        out.append((twins[net], aliases))
    return out


# Host ports chosen by this process's plans, by job, until the job ends (``release_ports``):
# ``ports_in_use`` sees a port once its container exists, and clones planned at once would
# otherwise pick the same one, and one of them fail to start.
_claimed: dict[int, str] = {}


def release_ports(job: str) -> None:
    """Forget the host ports ``job``'s plan chose: its containers hold them now, or never will."""
    for port in [p for p, holder in _claimed.items() if holder == job]:
        del _claimed[port]


def _remap_ports(plan: ClonePlan, name: str, bindings: JSON) -> JSON:
    out: JSON = {}
    for port, binds in bindings.items():
        out[port] = []
        for bind in binds or []:
            new = dict(bind)
            if bind.get("HostPort"):
                taken = plan.host_ports | plan.busy_ports | _claimed.keys()
                new["HostPort"] = str(_free_port(port, taken))
                plan.host_ports.add(int(new["HostPort"]))
                _claimed[int(new["HostPort"])] = plan.job
                plan.ports.append(PortRemap(name, port, bind["HostPort"], new["HostPort"]))
            out[port].append(new)
    return out


# Below Linux's ephemeral range (32768 and up): a port chosen there is not taken, between
# planning and start, by the source port of some outgoing connection.
PORT_RANGE = range(20000, 32768)


def _free_port(port_spec: str, taken: set[int]) -> int:
    """A host port that nothing on the engine's host uses (``_probe_host_ports``)."""
    free = [port for port in PORT_RANGE if port not in taken]
    if not free:
        raise DockerFailed(f"no free host port for {port_spec} in {PORT_RANGE}")
    return random.choice(free)


async def _check_disk_for_binds(
    docker: DockerClient, settings: Settings, plan: ClonePlan, *, target: DockerClient | None
) -> None:
    """``_check_disk``; its refusal names the host directories the copy counts."""
    try:
        await _check_disk(docker, settings, plan, target=target)
    except NotEnoughDisk as exc:
        paths = sorted({v.source for v in plan.volumes if v.source and v.source.startswith("/")})
        if paths:
            exc.message += f"; the copy includes the host directories {', '.join(paths)}"
            exc.args = (exc.message,)
        raise


async def _check_disk(
    docker: DockerClient, settings: Settings, plan: ClonePlan, *, target: DockerClient | None
) -> None:
    """The data to copy, measured on the source's engine, against the room on the target's."""
    sources = sorted({v.source for v in plan.volumes if v.source})
    if not sources:
        return
    await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
    sizes = await measure_volumes(
        docker, image=settings.helper_image, volumes=sources, labels={JOB: plan.job}
    )
    free = sizes.free
    if target is not None and target is not docker:
        free = await free_disk(
            target, image=settings.helper_image, busybox=settings.busybox, labels={JOB: plan.job}
        )
    replicas = [v for v in plan.volumes if v.replica_of]
    by_clone = {v.name: v.source for v in plan.volumes if v.source}
    needed = sum(sizes.used.values())
    needed += sum(sizes.used[by_clone[v.replica_of]] for v in replicas if v.replica_of in by_clone)
    for vol in plan.volumes:
        vol.bytes = sizes.used.get(vol.source or by_clone.get(vol.replica_of or "", "") or "", 0)
    plan.copy_bytes = needed
    # beside what running jobs' copies will still write; a job keeps ``needed`` reserved
    await reserve_disk(copy=needed, reserve=settings.disk_reserve_bytes, free=free)

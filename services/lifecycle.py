"""The operations users ask for: clone, refresh and delete an environment."""

from __future__ import annotations

import time

from services.cloning import CloneResult, execute_clone
from services.docker import DockerClient, gather_all
from services.environments import JOB, PROJECT, Environment, Node, get_environment
from services.errors import (
    BadRequest,
    DockerFailed,
    EnvironmentNotFound,
    HookFailed,
    NotAClone,
)
from services.failpoints import failpoint
from services.freeze import FreezeRecorder, ignore_freeze, snapshot_stateful
from services.hooks import read_hooks, run_hooks
from services.ledger import Ledger, undo_on_failure
from services.naming import (
    Holder,
    check_name_free,
    default_clone_name,
    describe_holders,
    held_names,
)
from services.planning import (
    ClonePlan,
    NodePlan,
    plan_clone,
    plan_refresh,
    plan_rename,
    release_ports,
)
from services.progress import EventSink, Warned, ignore_events, step
from services.settings import Settings


async def clone_environment(
    docker: DockerClient,
    settings: Settings,
    *,
    source: str,
    name: str | None = None,
    snapshot: bool = False,
    job: str | None = None,
    owner: str | None = None,
    emit: EventSink = ignore_events,
    on_freeze: FreezeRecorder = ignore_freeze,
    target: DockerClient | None = None,
) -> CloneResult:
    """Plan (refusing bad requests before anything is made), then make the clone: on the
    source's engine (``docker``), or ``target``'s."""
    onto = target or docker
    if name is None:
        name = default_clone_name(source, await held_names(onto))
    plan = await plan_clone(
        docker, settings, source=source, name=name, snapshot=snapshot, job=job, owner=owner,
        target=onto,
    )  # fmt: skip
    try:
        # again just before anything is made: a volume of that name may have come meanwhile,
        # and creating a volume that exists returns it (its data would be overwritten)
        await check_name_free(onto, name=plan.name)
        return await execute_clone(
            docker, settings, plan, emit=emit, on_freeze=on_freeze, target=onto
        )
    finally:
        release_ports(plan.job)


async def refresh_clone(
    docker: DockerClient,
    settings: Settings,
    *,
    name: str,
    source: str | None = None,
    job: str | None = None,
    emit: EventSink = ignore_events,
    on_freeze: FreezeRecorder = ignore_freeze,
    source_docker: DockerClient | None = None,
) -> CloneResult:
    """Re-copy a clone's stateful layers from its source, with the same short source freeze.

    ``source`` names the source when it was renamed since (the clone's label keeps the
    name it had); ``source_docker`` is the source's engine when it is not the clone's
    (``docker``).

    The clone's stateful nodes are stopped while their data is replaced, and come back
    as they were if the refresh fails. The source's on-clone hooks run again in the new
    nodes (the data they masked came back with the copy); a failing one fails the refresh.
    """
    started = time.monotonic()
    clone = await get_environment(docker, name)
    origin = source_docker or docker
    plan = await plan_refresh(origin, settings, clone=clone, source=source, job=job, target=docker)
    try:
        return await _refresh(
            docker, settings, clone=clone, plan=plan, started=started, emit=emit,
            on_freeze=on_freeze, source_docker=origin,
        )  # fmt: skip
    finally:
        release_ports(plan.job)


async def _refresh(
    docker: DockerClient,
    settings: Settings,
    *,
    clone: Environment,
    plan: ClonePlan,
    started: float,
    emit: EventSink,
    on_freeze: FreezeRecorder,
    source_docker: DockerClient,
) -> CloneResult:
    declared = await read_hooks(
        docker=source_docker, settings=settings, env=plan.source, job=plan.job
    )
    for warning in declared.warnings:
        emit(Warned(warning))
    refreshed = {layer.name for layer in plan.layers}
    old = [n for n in clone.nodes if n.layer in refreshed]
    masking = [h for h in declared.hooks if h.layer in refreshed]
    # while hooks mask the new data, the layers that serve are held stopped: the router
    # sends a running web node traffic, and the new data is not masked yet
    held = [n for n in clone.nodes if n not in old and n.state in _UP] if masking else []
    ledger = Ledger(docker)
    async with step(emit, "stop", ", ".join(n.name for n in old + held)):
        await _set_aside(docker, old, suffix=plan.job)
        await gather_all(*(docker.stop_container(n.id) for n in held))

    async def undo() -> None:
        await _restore(docker, ledger, old)
        await gather_all(*(docker.start_container(n.id) for n in held))

    async with undo_on_failure(undo, step="refresh", passthrough=(HookFailed,)):
        for vol in plan.volumes:
            # a bind the source gained since the clone was made: without this, the copy
            # helper's mount would create the volume unlabelled, and a delete would leave it
            if not vol.exists:
                ledger.add_volume(await docker.create_volume(name=vol.name, labels=vol.labels))
        report = await snapshot_stateful(
            source_docker, settings, plan, ledger=ledger, emit=emit, on_freeze=on_freeze,
            target=docker,
        )  # fmt: skip
        await gather_all(*(docker.start_container(n.name) for n in plan.nodes))
        hooks = await run_hooks(
            docker=docker,
            hooks=masking,
            nodes=plan.nodes,
            timeout_s=settings.hook_timeout_s,
            emit=emit,
        )
        if held:
            async with step(emit, "start", ", ".join(n.name for n in held)):
                await gather_all(*(docker.start_container(n.id) for n in held))
    await _remove_nodes(docker, old)
    await _remove_snapshots(
        docker, {n.image_id for n in old} - {n.config["Image"] for n in plan.nodes}
    )
    return CloneResult(
        job=plan.job,
        environment=clone.name,
        source=plan.source.name,
        state="succeeded",
        freeze_ms=report.longest_ms,
        nodes=[n.name for n in plan.nodes],
        warnings=declared.warnings + report.warnings,
        elapsed_ms=int((time.monotonic() - started) * 1000),
        hooks=hooks,
    )


_UP = ("running", "paused", "restarting")


async def _set_aside(docker: DockerClient, nodes: list[Node], *, suffix: str) -> None:
    async def one(node: Node) -> None:
        # its data is about to be replaced: no need to wait long for a clean shutdown
        await docker.stop_container(node.id, timeout_s=3)
        await docker.rename_container(node.id, f"{node.name}-old-{suffix}")

    await gather_all(*(one(n) for n in nodes))


async def _restore(docker: DockerClient, ledger: Ledger, nodes: list[Node]) -> None:
    await ledger.rollback()
    for node in nodes:
        await docker.rename_container(node.id, node.name)
        if node.state in ("running", "paused"):
            await docker.start_container(node.id)


async def rename_environment(
    docker: DockerClient,
    settings: Settings,
    *,
    name: str,
    new_name: str,
    job: str | None = None,
    emit: EventSink = ignore_events,
    on_freeze: FreezeRecorder = ignore_freeze,
) -> CloneResult:
    """Give an environment a new name: its nodes re-created under it, on the same data.

    The nodes are stopped for the few seconds this takes: each is committed to an image (its
    file system kept), then re-created under the new name with the same volumes and host
    ports, on twin networks. The old nodes are removed only once the new ones run; until
    then any failure brings the old ones back as they were. ``on_freeze`` is told every old
    node before one is stopped, so that recovery knows what to start again, and told again
    once the new ones run, so that recovery finishes the rename instead.
    """
    started = time.monotonic()
    plan = await plan_rename(docker, settings, name=name, new_name=new_name, job=job)
    await check_name_free(docker, name=new_name, renaming=name)
    old = list(plan.source.nodes)
    was_running = {n.id for n in old if n.state in ("running", "paused", "restarting")}
    await on_freeze({n.id: "stopped" if n.id in was_running else "kept" for n in old})
    ledger = Ledger(docker)
    async with undo_on_failure(
        lambda: _undo_rename(docker, ledger, old, was_running), step="rename"
    ):
        async with step(emit, "stop", name):
            # the layers using the data stores first, then the stores
            await gather_all(*(docker.stop_container(n.id) for n in old if not _stateful(plan, n)))
            await gather_all(*(docker.stop_container(n.id) for n in old if _stateful(plan, n)))
        async with step(emit, "commit", name):
            images = await gather_all(*(_commit(docker, plan, ledger, n) for n in plan.nodes))
        for node, image in zip(plan.nodes, images, strict=True):
            node.config["Image"] = image
        async with step(emit, "networks"):
            for net in plan.networks:
                ledger.add_network(await docker.create_network(net.config))
        for node in plan.nodes:
            async with step(emit, "create", node.name):
                await ledger.create_container(
                    name=node.name, config=node.config, networks=node.networks
                )
        await failpoint("rename")
        again = [n for n in plan.nodes if n.source.id in was_running]
        for stateful in (True, False):
            await gather_all(*(_start(docker, n, emit) for n in again if n.stateful is stateful))
    # the point of no return, written down before the old nodes go: recovery completes it
    await on_freeze({n.id: "replaced" for n in old})
    await finish_rename(docker, name=name, old=[n.id for n in old])
    return CloneResult(
        job=plan.job,
        environment=new_name,
        source=name,
        state="succeeded",
        nodes=[n.name for n in plan.nodes],
        rewrites=plan.rewrites,
        elapsed_ms=int((time.monotonic() - started) * 1000),
    )


def _stateful(plan: ClonePlan, node: Node) -> bool:
    return any(layer.name == node.layer for layer in plan.stateful_layers)


async def _commit(docker: DockerClient, plan: ClonePlan, ledger: Ledger, node: NodePlan) -> str:
    image = await docker.commit_container(
        node.source.id, repo=f"clonebot/{plan.name}-{node.layer}", tag=plan.job,
        labels=plan.labels(),
    )  # fmt: skip
    ledger.add_image(image)
    return image


async def _start(docker: DockerClient, node: NodePlan, emit: EventSink) -> None:
    async with step(emit, "start", node.name):
        await docker.start_container(node.name)


async def _undo_rename(
    docker: DockerClient, ledger: Ledger, old: list[Node], was_running: set[str]
) -> None:
    await ledger.rollback()
    await gather_all(*(docker.start_container(n.id) for n in old if n.id in was_running))


async def finish_rename(docker: DockerClient, *, name: str, old: list[str]) -> None:
    """Remove the old nodes and networks, once the renamed environment runs."""
    await failpoint("rename-cleanup")
    await gather_all(*(_remove_if_there(docker, cid) for cid in old))
    for net in await docker.list_networks(labels=[f"{PROJECT}={name}"]):
        await docker.remove_network(net["Id"])


async def _remove_if_there(docker: DockerClient, ref: str) -> None:
    try:
        await docker.remove_container(ref)
    except DockerFailed as exc:
        if exc.status != 404:
            raise


async def check_delete(docker: DockerClient, *, name: str, force: bool) -> Environment:
    """The environment ``delete_environment`` would delete, or its refusal.

    Only clones, unless ``force``: deleting a source's volumes would lose its data. An
    environment that is down (no container; returned without layers) may be deleted, but the
    volumes it left go only with ``force``: they may hold the only copy of its data.
    """
    try:
        env = await get_environment(docker, name)
    except EnvironmentNotFound:
        volumes = sorted(v["Name"] for v in await docker.list_volumes(labels=[_project(name)]))
        if volumes and not force:
            left = describe_holders([Holder("volume", v, name) for v in volumes])
            raise BadRequest(
                f"{name} is down and left {left}, which may hold its only data: "
                "delete it with --force to remove them"
            ) from None
        return Environment(name=name, layers=())
    if env.cloned_from is None and not force:
        raise NotAClone(name, "delete (without --force)")
    return env


async def delete_environment(
    docker: DockerClient, *, name: str, force: bool = False
) -> Environment:
    """Remove an environment's containers, networks, volumes and clonebot-made images (see
    ``check_delete`` for what needs ``force``); of one that is down, what it left.

    Volumes a clone shares with its source belong to the source and are kept; so is any
    volume or image a container of another environment uses (running or stopped), and any
    network one is on.
    """
    env = await check_delete(docker, name=name, force=force)
    await _remove_nodes(docker, list(env.nodes))
    label = _project(name)
    others = await docker.list_containers()  # ours are gone: whatever is left is someone else's
    in_use = {m.get("Name") for c in others for m in c.get("Mounts") or []}
    # a container of no project (an HAProxy clonebot connected to reach it) is disconnected
    foreign = {
        net
        for c in others
        if (c.get("Labels") or {}).get(PROJECT) not in (None, name)
        for net in (c.get("NetworkSettings") or {}).get("Networks") or {}
    }
    for net in await docker.list_networks(labels=[label]):
        if net["Name"] not in foreign:
            await docker.remove_network(net["Id"])
    # its own volumes, and those clonebot made for it under an earlier name (a rename keeps
    # the volumes); never a volume it shares with its source
    volumes = {vol["Name"] for vol in await docker.list_volumes(labels=[label])}
    made = {vol["Name"] for vol in await docker.list_volumes(labels=[JOB])}
    volumes |= made & {m.source for n in env.nodes for m in n.volumes}
    for volume in sorted(volumes - in_use):
        await docker.remove_volume(volume)
    images = {image["Id"] for image in await docker.list_images(labels=[label, JOB])}
    await _remove_snapshots(docker, images | {n.image_id for n in env.nodes})
    return env


def _project(name: str) -> str:
    return f"{PROJECT}={name}"


async def _remove_snapshots(docker: DockerClient, images: set[str]) -> None:
    """Remove images clonebot committed for nodes that are gone, and their clonebot-made
    parents (a renamed node's image is a commit on top of its earlier one).

    An image any container uses, running or stopped, of any environment, is kept: Docker's
    forced removal would take it from under a stopped one.
    """
    used = {c.get("ImageID") for c in await docker.list_containers()}
    pending = list(images)
    while pending:
        image = pending.pop()
        info = await docker.inspect_image(image)
        if not info or JOB not in (info["Config"].get("Labels") or {}) or info["Id"] in used:
            continue
        if not await docker.remove_image(image):  # a child image or a container uses it
            continue
        if info.get("Parent"):
            pending.append(info["Parent"])


async def _remove_nodes(docker: DockerClient, nodes: list[Node]) -> None:
    await gather_all(*(docker.remove_container(n.id) for n in nodes))

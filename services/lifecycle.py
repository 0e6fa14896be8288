"""The operations users ask for: clone, refresh and delete an environment."""

from __future__ import annotations

import asyncio
import time

from services.cloning import CloneResult, execute_clone
from services.docker import DockerClient, gather_all
from services.environments import JOB, PROJECT, Environment, Node, get_environment
from services.errors import ClonebotError, CloneFailed, NotAClone
from services.freeze import FreezeRecorder, ignore_freeze, snapshot_stateful
from services.ledger import Ledger
from services.planning import plan_clone, plan_refresh
from services.progress import EventSink, ignore_events, step
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
) -> CloneResult:
    """Plan (refusing bad requests before anything is made), then make the clone."""
    plan = await plan_clone(
        docker, settings, source=source, name=name, snapshot=snapshot, job=job, owner=owner
    )
    return await execute_clone(docker, settings, plan, emit=emit, on_freeze=on_freeze)


async def refresh_clone(
    docker: DockerClient,
    settings: Settings,
    *,
    name: str,
    job: str | None = None,
    emit: EventSink = ignore_events,
    on_freeze: FreezeRecorder = ignore_freeze,
) -> CloneResult:
    """Re-copy a clone's stateful layers from its source, with the same short source freeze.

    The clone's stateful nodes are stopped while their data is replaced, and come back
    as they were if the refresh fails.
    """
    started = time.monotonic()
    clone = await get_environment(docker, name)
    plan = await plan_refresh(docker, settings, clone=clone, job=job)
    old = [n for n in clone.nodes if n.layer in {layer.name for layer in plan.layers}]
    ledger = Ledger(docker)
    async with step(emit, "stop", ", ".join(n.name for n in old)):
        await _set_aside(docker, old, suffix=plan.job)
    try:
        report = await snapshot_stateful(
            docker, settings, plan, ledger=ledger, emit=emit, on_freeze=on_freeze
        )
        await gather_all(*(docker.start_container(n.name) for n in plan.nodes))
    except (Exception, asyncio.CancelledError) as exc:
        await asyncio.shield(_restore(docker, ledger, old))
        if isinstance(exc, asyncio.CancelledError):
            raise
        cause = exc.message if isinstance(exc, ClonebotError) else f"{type(exc).__name__}: {exc}"
        raise CloneFailed(step="refresh", cause=cause) from exc
    await _remove_nodes(docker, old)
    await _remove_snapshots(
        docker, {n.image_id for n in old} - {n.config["Image"] for n in plan.nodes}
    )
    return CloneResult(
        job=plan.job,
        environment=name,
        source=plan.source.name,
        state="succeeded",
        freeze_ms=report.longest_ms,
        nodes=[n.name for n in plan.nodes],
        warnings=report.warnings,
        elapsed_ms=int((time.monotonic() - started) * 1000),
    )


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


async def delete_environment(
    docker: DockerClient, *, name: str, force: bool = False
) -> Environment:
    """Remove an environment's containers, networks, volumes and clonebot-made images.

    Only clones, unless ``force``: deleting a source's volumes would lose its data.
    Volumes a clone shares with its source belong to the source and are kept.
    """
    env = await get_environment(docker, name)
    if env.cloned_from is None and not force:
        raise NotAClone(name, "delete (without --force)")
    await _remove_nodes(docker, list(env.nodes))
    label = f"{PROJECT}={name}"
    for net in await docker.list_networks(labels=[label]):
        await docker.remove_network(net["Id"])
    for vol in await docker.list_volumes(labels=[label]):
        await docker.remove_volume(vol["Name"])
    for image in await docker.list_images(labels=[label, JOB]):
        await docker.remove_image(image["Id"])
    return env


async def _remove_snapshots(docker: DockerClient, images: set[str]) -> None:
    """Remove images clonebot committed for nodes that are gone."""
    for image in images:
        info = await docker.inspect_image(image)
        if info and JOB in (info["Config"].get("Labels") or {}):
            await docker.remove_image(image)


async def _remove_nodes(docker: DockerClient, nodes: list[Node]) -> None:
    await gather_all(*(docker.remove_container(n.id) for n in nodes))

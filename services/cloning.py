"""Executing a clone plan: networks, volumes, nodes, the stateful snapshot, start, rollback."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.carrying import carry_images
from services.docker import DockerClient, gather_all
from services.environments import JOB
from services.errors import HookFailed, NameTaken
from services.failpoints import failpoint
from services.freeze import FreezeRecorder, ignore_freeze, snapshot_stateful
from services.hooks import HookRun, read_hooks, run_hooks
from services.ledger import Ledger, undo_on_failure
from services.naming import Rewrite
from services.planning import ClonePlan, NodePlan, PortRemap
from services.progress import Event, EventSink, StepStarted, Warned, ignore_events, step
from services.settings import Settings


@dataclass
class CloneResult:
    job: str
    environment: str
    source: str
    state: str  # "succeeded" or "failed"
    freeze_ms: int = 0
    started: bool = True
    nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)
    ports: list[PortRemap] = field(default_factory=list)
    error: str | None = None
    elapsed_ms: int = 0
    hooks: list[HookRun] = field(default_factory=list)


async def execute_clone(
    docker: DockerClient,
    settings: Settings,
    plan: ClonePlan,
    *,
    emit: EventSink = ignore_events,
    on_freeze: FreezeRecorder = ignore_freeze,
    target: DockerClient | None = None,
) -> CloneResult:
    """Create the clone the plan describes; on any failure remove all it created and raise.

    ``on_freeze`` is told which source containers are about to be frozen, before they are.
    The source's on-clone hooks are read (a bad declaration refused) before anything is made,
    and run once the clone's nodes are up; a snapshot's are stopped again after. The clone is
    made on ``target``'s engine when given (the plan's ``across``), the source's otherwise.
    """
    started = time.monotonic()
    source, docker = docker, target or docker
    ledger = Ledger(docker)
    current = _CurrentStep(emit)
    declared = await read_hooks(docker=source, settings=settings, env=plan.source, job=plan.job)
    for warning in plan.warnings + declared.warnings:
        emit(Warned(warning))
    async with undo_on_failure(
        ledger.rollback, step=lambda: current.name, passthrough=(NameTaken, HookFailed)
    ):
        current.name = "networks"
        async with step(current, "networks"):
            await _create_networks(docker, plan, ledger)
        current.name = "volumes"
        async with step(current, "volumes"):
            await _create_volumes(docker, plan, ledger)
        if plan.across:
            current.name = "images"
            await carry_images(source, docker, images=_images(plan), ledger=ledger, emit=emit)
        current.name = "stateless nodes"
        await gather_all(*(_create_node(docker, n, ledger, emit) for n in _stateless(plan)))
        current.name = "stateful snapshot"
        freeze = await snapshot_stateful(
            source, settings, plan, ledger=ledger, emit=emit, on_freeze=on_freeze, target=docker
        )
        # a snapshot with hooks is started for them: its copy must not keep what they mask
        starting = not plan.snapshot or bool(declared.hooks)
        hooks: list[HookRun] = []
        # the data stores and their hooks first, then the layers that serve: nothing is
        # served (the router sends a running web node traffic) before the data is masked
        for stateful in (True, False):
            nodes = [n for n in plan.nodes if n.stateful is stateful]
            current.name = "start"
            if starting:
                await _start_nodes(docker, nodes, emit)
            if stateful and starting:
                await failpoint("start")
            current.name = "hooks"
            layers = {n.layer for n in nodes}
            hooks += await run_hooks(
                docker=docker,
                hooks=[h for h in declared.hooks if h.layer in layers],
                nodes=nodes,
                timeout_s=settings.hook_timeout_s,
                emit=current,
            )
        if plan.snapshot and declared.hooks:
            current.name = "stop"
            await _stop_all(docker, plan)
    return CloneResult(
        job=plan.job,
        environment=plan.name,
        source=plan.source.name,
        state="succeeded",
        freeze_ms=freeze.longest_ms,
        started=not plan.snapshot,
        nodes=[n.name for n in plan.nodes],
        warnings=plan.warnings + declared.warnings + freeze.warnings,
        rewrites=plan.rewrites,
        ports=plan.ports,
        elapsed_ms=int((time.monotonic() - started) * 1000),
        hooks=hooks,
    )


class _CurrentStep:
    """An event sink that also remembers which step is running, to name it on failure."""

    def __init__(self, emit: EventSink) -> None:
        self.name = "plan"
        self._emit = emit

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepStarted):
            self.name = event.step
        self._emit(event)


def _stateless(plan: ClonePlan) -> list[NodePlan]:
    return [n for n in plan.nodes if not n.stateful]


def _images(plan: ClonePlan) -> list[str]:
    """The images the clone's stateless nodes are made from (the stateful ones' are commits)."""
    return sorted({str(n.config["Image"]) for n in _stateless(plan)})


async def _create_networks(docker: DockerClient, plan: ClonePlan, ledger: Ledger) -> None:
    async def create(config: dict[str, object]) -> None:
        ledger.add_network(await docker.create_network(config))

    await gather_all(*(create(n.config) for n in plan.networks))


async def _create_volumes(docker: DockerClient, plan: ClonePlan, ledger: Ledger) -> None:
    async def create(name: str, labels: dict[str, str]) -> None:
        # Docker's create returns a volume that exists: the copy would write into its data
        if await docker.inspect_volume(name) is not None:
            raise NameTaken(plan.name, f"volume {name} exists already")
        made = await docker.create_volume(name=name, labels=labels)
        # one that came between the check and the create is returned as it is: not ours
        found = await docker.inspect_volume(made)
        if found is None or (found.get("Labels") or {}).get(JOB) != plan.job:
            raise NameTaken(plan.name, f"volume {name} exists already")
        ledger.add_volume(made)

    await gather_all(*(create(v.name, v.labels) for v in plan.volumes if not v.exists))


async def _create_node(
    docker: DockerClient, node: NodePlan, ledger: Ledger, emit: EventSink
) -> str:
    async with step(emit, "create", node.name):
        return await ledger.create_container(
            name=node.name, config=node.config, networks=node.networks
        )


async def _start_nodes(docker: DockerClient, nodes: list[NodePlan], emit: EventSink) -> None:
    async def start(node: NodePlan) -> None:
        async with step(emit, "start", node.name):
            await docker.start_container(node.name)

    await gather_all(*(start(n) for n in nodes))


async def _stop_all(docker: DockerClient, plan: ClonePlan) -> None:
    """Stop the clone's nodes in the reverse order they started: the layers using the data
    stores first, then the stores."""
    await gather_all(*(docker.stop_container(n.name) for n in _stateless(plan)))
    await gather_all(*(docker.stop_container(n.name) for n in plan.nodes if n.stateful))

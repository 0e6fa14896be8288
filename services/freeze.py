"""The stateful snapshot: pre-copy while the source runs, then one short freeze for the rest.

Every stateful layer's master is copied into the clone's first node of that layer: its
volumes (by a helper container, see ``volumes.py``) and its own file system (a commit, then
the paths changed since, see ``rootfs.py``). All masters are frozen together, so the
clone is one instant across layers, and each is resumed whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from services import metrics, rootfs
from services.docker import JSON, DockerClient, gather_all
from services.environments import JOB, Layer, Node
from services.errors import ClonebotError, DockerFailed, DockerUnavailable, FreezeTimeout
from services.failpoints import failpoint
from services.ledger import Ledger
from services.planning import ClonePlan, NodePlan, VolumePlan
from services.progress import BytesCopied, EventSink, StepDone, StepStarted, Warned, step
from services.relay import RsyncRelay
from services.settings import Settings
from services.volumes import FinalPass, copy_helper, ensure_helper_image, half_helper, pre_copy
from services.watchdog import guarded
from storage.outage import is_outage

log = logging.getLogger(__name__)
FreezeRecorder = Callable[[dict[str, str]], Awaitable[None]]
FREEZE_LABEL = "clonebot.freeze"  # "pause" (the default) or "stop"
T = TypeVar("T")


async def ignore_freeze(frozen: dict[str, str]) -> None:
    """A freeze recorder that keeps nothing (no durable job behind the clone)."""


_CONFLICT = 409
_RESUME_TRIES = 5


@dataclass
class FreezeReport:
    longest_ms: int = 0
    warnings: list[str] = field(default_factory=list)


async def snapshot_stateful(
    docker: DockerClient,
    settings: Settings,
    plan: ClonePlan,
    *,
    ledger: Ledger,
    emit: EventSink,
    on_freeze: FreezeRecorder = ignore_freeze,
    target: DockerClient | None = None,
) -> FreezeReport:
    """Create every stateful node of the clone as a consistent snapshot of its master; on
    ``target``'s engine when given (the masters are frozen on their own, ``docker``'s)."""
    layers = plan.stateful_layers
    if not layers:
        return FreezeReport()
    target = target or docker
    engines = {id(d): d for d in (docker, target)}.values()
    await gather_all(
        *(ensure_helper_image(d, image=settings.helper_image, busybox=settings.busybox)
          for d in engines)
    )  # fmt: skip
    claimed: set[str] = set()
    copies = [
        _MasterCopy(docker, target, settings, plan, layer, ledger, emit, claimed)
        for layer in layers
    ]
    try:
        await gather_all(*(c.prepare() for c in copies))
        report = await _freeze(docker, settings, copies, emit, on_freeze)
        await gather_all(*(c.complete() for c in copies))
    finally:
        await asyncio.shield(gather_all(*(c.close() for c in copies)))
    return report


async def _freeze(
    docker: DockerClient,
    settings: Settings,
    copies: list[_MasterCopy],
    emit: EventSink,
    on_freeze: FreezeRecorder,
) -> FreezeReport:
    report = FreezeReport()
    # every master, whatever its state when planned: paused or stopped then may be another
    # job's freeze, which ends (and the source runs again) before this job's final pass
    masters = [c.layer.master for c in copies]
    how = {m.id: _how_to_freeze(m, emit) for m in masters}
    frozen: dict[str, float] = {}  # what this job froze (or may have, if cancelled): when
    names = ", ".join(c.layer.master.name for c in copies)
    emit(StepStarted("freeze", names))
    # recorded before any call: a cancellation, or a crash, may land after the engine froze
    # it; recovery reads what ``on_freeze`` wrote. A job's recorder waits here while another
    # job has one of them frozen: freezes of one source run one after another, so no job
    # unfreezes a source another is still copying.
    await on_freeze(how)
    # as they are now that no other job freezes them: one stopped or paused by its owner
    # holds still and is left as it is
    running = await _running(docker, masters)
    if running != set(how):
        how = {cid: way for cid, way in how.items() if cid in running}
        await on_freeze(how)
    masters = [m for m in masters if m.id in running]
    async with _watched(docker, settings, how, copies, emit) as armed_at:
        try:
            await gather_all(*(_freeze_one(docker, m, how[m.id], frozen) for m in masters))
            await failpoint("freeze")
            # counted from the watchdog's arming when there is one: it resumes the sources at
            # its own deadline, a margin later, and the copy must be over by then
            limit = (
                asyncio.timeout(settings.freeze_timeout_s)
                if armed_at is None
                else asyncio.timeout_at(armed_at + settings.freeze_timeout_s)
            )
            async with limit:
                await gather_all(*(c.final_pass() for c in copies))
        except TimeoutError:
            raise FreezeTimeout(
                f"the final copy pass took over {settings.freeze_timeout_s:g} s "
                "(CLONEBOT_FREEZE_TIMEOUT); the source was unfrozen"
            ) from None
        finally:
            # a frozen source must be resumed even on error, timeout or cancellation
            await asyncio.shield(_resume_all(docker, how, frozen, report, on_freeze))
    emit(StepDone("freeze", names, report.longest_ms))
    return report


@asynccontextmanager
async def _watched(
    docker: DockerClient,
    settings: Settings,
    how: dict[str, str],
    copies: list[_MasterCopy],
    emit: EventSink,
) -> AsyncIterator[float | None]:
    """A freeze on another host's engine is guarded there too (``watchdog.py``): yields when
    its watchdog was armed (the event loop's time), or None without one."""
    if not docker.remote:
        yield None
        return
    watch = guarded(
        docker,
        image=settings.helper_image,
        how=how,
        timeout_s=settings.freeze_timeout_s,
        labels={JOB: copies[0].plan.job},  # not the clone's project: that is on its engine
    )
    async with watch as unguarded:
        armed_at = asyncio.get_running_loop().time() if unguarded is None else None
        if unguarded is not None:
            emit(Warned(f"no watchdog guards the freeze on the source's engine ({unguarded}): "
                        "cut off from clonebot, the source would stay frozen until it is "
                        "reached again"))  # fmt: skip
        yield armed_at


async def resume_recorded(docker: DockerClient, frozen: list[dict[str, str]]) -> int:
    """Resume the source containers a job's record says it froze (and are still frozen);
    how many were. Only for a job that can no longer do it itself: ended or dead."""
    resumed = 0
    for entry in frozen:
        cid, how = entry["container"], entry["how"]
        info = await docker.find_container(cid)
        if info is None:
            continue
        state = info["State"]
        if state.get("Paused"):
            await docker.unpause_container(cid)
            resumed += 1
        elif how == "stopped" and not state.get("Running"):
            await docker.start_container(cid)
            resumed += 1
    return resumed


async def _running(docker: DockerClient, masters: list[Node]) -> set[str]:
    async def state(master: Node) -> tuple[str, JSON]:
        return master.id, (await docker.inspect_container(master.id))["State"]

    states = await gather_all(*(state(m) for m in masters))
    return {cid for cid, st in states if st.get("Running") and not st.get("Paused")}


def _how_to_freeze(master: Node, emit: EventSink) -> str:
    """Paused, unless the container's ``clonebot.freeze=stop`` label asks for a stop."""
    asked = master.labels.get(FREEZE_LABEL, "pause")
    if asked not in ("pause", "stop"):
        emit(Warned(f"{master.name}: {FREEZE_LABEL}={asked!r} is not pause or stop; paused"))
    return "stopped" if asked == "stop" else "paused"


async def _freeze_one(
    docker: DockerClient, master: Node, how: str, frozen: dict[str, float]
) -> None:
    frozen[master.id] = time.monotonic()
    try:
        if how == "paused":
            await pause(docker, master.id)
        else:
            await docker.stop_container(master.id)
    except DockerFailed as exc:
        # the engine refused, so it is not frozen by this job: it is left exactly as it is
        # (never stopped instead, never resumed by this job)
        del frozen[master.id]
        verb = "paused" if how == "paused" else "stopped"
        raise DockerFailed(
            f"{master.name} could not be {verb} for the final copy ({exc.message}); "
            "the source was left as it was",
            status=exc.status,
        ) from exc


async def pause(docker: DockerClient, ref: str) -> None:
    """Pause; the cgroup freezer may give up on a busy process ("unable to freeze"): that is
    tried again twice, a moment later, before the pause counts as failed."""
    for attempt in range(3):
        try:
            await docker.pause_container(ref)
            return
        except DockerFailed as exc:
            if "unable to freeze" not in exc.message or attempt == 2:
                raise
        await asyncio.sleep(0.1)


async def _resume_all(
    docker: DockerClient,
    how: dict[str, str],
    frozen: dict[str, float],
    report: FreezeReport,
    on_freeze: FreezeRecorder,
) -> None:
    async def resume(master_id: str) -> None:
        for attempt in range(_RESUME_TRIES):
            try:
                if how[master_id] == "paused":
                    await docker.unpause_container(master_id)
                else:
                    await docker.start_container(master_id)
                break
            except DockerFailed as exc:
                # not paused after all: 409, or this engine's 500 "is not paused" (a restart
                # of the engine stopped it, its restart policy may have started it again)
                if exc.status == _CONFLICT or "is not paused" in exc.message:
                    break
                failure: ClonebotError = exc
            except DockerUnavailable as exc:  # an engine hiccup must not leave it frozen
                failure = exc
            if attempt == _RESUME_TRIES - 1:
                # the job's record keeps it (``on_freeze({})`` is not reached): recovery
                # resumes it
                log.error("could not resume source container %s: %s", master_id, failure)
                raise failure
            await asyncio.sleep(0.2 * (attempt + 1))
        ms = int((time.monotonic() - frozen[master_id]) * 1000)
        report.longest_ms = max(report.longest_ms, ms)
        metrics.FREEZE_SECONDS.observe(ms / 1000)

    await gather_all(*(resume(mid) for mid in list(frozen)))
    if how:
        try:  # every source runs again: the next job may freeze them
            await on_freeze({})
        except Exception as exc:  # the job's end clears its record too
            # the database away (restarting) is no bug: one line, not a traceback
            log.warning(
                "could not record that the sources were resumed: %s",
                exc,
                exc_info=not is_outage(exc),
            )


class _MasterCopy:
    """Copies one stateful layer's master into the clone's nodes of that layer, made on the
    ``target`` engine: the master's own (``docker``), or another (a relay carries the data)."""

    def __init__(
        self,
        docker: DockerClient,
        target: DockerClient,
        settings: Settings,
        plan: ClonePlan,
        layer: Layer,
        ledger: Ledger,
        emit: EventSink,
        claimed: set[str],
    ) -> None:
        self.docker, self.settings, self.plan, self.layer = docker, settings, plan, layer
        self.target, self.across = target, target is not docker
        self.ledger, self.emit = ledger, emit
        self.nodes = [n for n in plan.nodes if n.layer == layer.name]
        # host directories are copied into the clone's volumes like volumes (see planning)
        master_volumes = {m.source for m in layer.master.volumes + layer.master.binds}
        self.volumes = [v for v in plan.volumes if v.source in master_volumes - claimed]
        claimed.update(v.source for v in self.volumes if v.source)
        self.first: NodePlan = self.nodes[0]
        self.first_id = ""
        self.helper: str | None = None
        self._resources = AsyncExitStack()
        self._final: FinalPass | None = None
        self._rootfs_helper: str | None = None  # lists the master's changes (overlay2)
        self._relay: RsyncRelay | None = None  # to the target engine's helper
        self._baseline: rootfs.Listing = {}
        self._recommit = False
        self._changed_rootfs = False

    async def prepare(self) -> None:
        upper = rootfs.upper_dir(self.layer.master)
        name = f"{self.plan.name}-copy-{self.layer.name}-{self.plan.job}"
        sources = [v.source or "" for v in self.volumes]
        targets = [v.name for v in self.volumes]
        # on another engine than the clone's, the job's label only: the clone's project
        # label would show the clone there too while the copy runs
        here = {JOB: self.plan.job} if self.across else self.plan.labels()
        if self.volumes or upper:
            helper = half_helper(
                self.docker,
                image=self.settings.helper_image,
                name=name,
                sources=sources,
                targets=[] if self.across else targets,
                labels=here,
                rootfs=upper,
            )
            self.helper = await self._resources.enter_async_context(helper)
        if self.across and self.volumes and self.helper:
            far = half_helper(
                self.target,
                image=self.settings.helper_image,
                name=name,
                targets=targets,
                labels=self.plan.labels(),
            )
            far_helper = await self._resources.enter_async_context(far)
            relay = RsyncRelay(self.docker, self.helper, self.target, far_helper)
            self._relay = await self._resources.enter_async_context(relay)
        self._rootfs_helper = self.helper if upper else None
        await gather_all(self._pre_copy_volumes(), self._pre_copy_rootfs())
        if self.volumes and self.helper:
            final = FinalPass(
                self.docker,
                helper=self.helper,
                count=len(self.volumes),
                on_warning=self._warn,
                remote=self.across,
            )
            self._final = await self._relayed(self._resources.enter_async_context(final))

    async def _pre_copy_volumes(self) -> None:
        if not self.volumes or self.helper is None:
            return
        await failpoint("pre-copy")
        total = sum(v.bytes for v in self.volumes)
        async with step(self.emit, "pre-copy", self.first.name):

            def on_bytes(copied: int) -> None:
                self.emit(BytesCopied("pre-copy", self.first.name, copied, total))

            await self._relayed(
                pre_copy(
                    self.docker,
                    helper=self.helper,
                    count=len(self.volumes),
                    on_bytes=on_bytes,
                    on_warning=self._warn,
                    remote=self.across,
                )
            )

    async def _relayed(self, copy: Awaitable[T]) -> T:
        """A copy's failure, named by the relay when it saw why (a command refused, a
        connection to an engine lost): rsync only sees its end."""
        try:
            return await copy
        except DockerFailed as exc:
            if self._relay is not None and self._relay.failure:
                raise DockerFailed(f"{exc.message} ({self._relay.failure})") from exc
            raise

    async def _pre_copy_rootfs(self) -> None:
        master = self.layer.master
        async with step(self.emit, "commit", self.first.name):
            # listed before the commit: a change in between is copied again, never missed
            self._baseline = await rootfs.list_changes(
                self.docker, master=master.id, helper=self._rootfs_helper
            )
            image = await self._commit(master.id, on=self.docker)
        if self.across:
            async with step(self.emit, "carry", self.first.name):
                await self._carry(image)
        self.first.config["Image"] = image
        self.first_id = await _create(self.target, self.first, self.ledger)

    async def _commit(self, ref: str, *, on: DockerClient) -> str:
        """An image of container ``ref`` of engine ``on``; the job's ledger removes it on
        failure when it is the clone's engine's (one on the source's is carried, see
        ``_carry``)."""
        repo = f"clonebot/{self.plan.name}-{self.layer.name}"
        # the clone's labels even on the source's engine: carried, it is the clone's image
        # (a delete removes it by them); an image makes no environment appear there
        labels = self.plan.labels()
        image = await on.commit_container(ref, repo=repo, tag=self.plan.job, labels=labels)
        if on is self.target:
            self.ledger.add_image(image)
        return image

    async def _carry(self, image: str) -> None:
        """A commit of the master, carried to the clone's engine and removed from the
        source's, whatever happens (the job's label lets recovery find one left there)."""
        try:
            if await self.target.inspect_image(image) is None:
                self.ledger.add_image(image)
                await self.docker.carry_image(image, to=self.target)
        finally:
            try:
                await asyncio.shield(self.docker.remove_image(image))
            except ClonebotError as exc:  # never in place of the carry's own outcome
                log.warning("the commit %s stays on the source's engine: %s", image, exc.message)

    async def final_pass(self) -> None:
        """Runs while the master is frozen: only what changed since the pre-copy."""
        await gather_all(self._final_volumes(), self._final_rootfs())

    async def _final_volumes(self) -> None:
        if self._final is not None:
            await self._final.fire()

    async def _final_rootfs(self) -> None:
        master = self.layer.master.id
        now = await rootfs.list_changes(self.docker, master=master, helper=self._rootfs_helper)
        paths = rootfs.changed_paths(self._baseline, now)
        if paths is None:
            # a path removed since the commit: only a new commit removes it from the clone
            # (carried to another engine after the freeze, see ``complete``)
            self.first.config["Image"] = await self._commit(master, on=self.docker)
            self._recommit = True
            return
        for path in paths:
            await self.docker.copy_path(
                src=master,
                dst=self.first_id,
                path=path,
                into=posixpath.dirname(path),
                to=self.target,
            )
        # after the copies, which moved the times of the directories they wrote into
        directories = rootfs.changed_directories(self._baseline, now)
        for path in directories:
            await self.docker.copy_attributes(
                src=master, dst=self.first_id, path=path, to=self.target
            )
        self._changed_rootfs = bool(paths or directories)

    async def complete(self) -> None:
        """After the freeze: the layer's other nodes, copied from the first, not the source."""
        if self._recommit:
            if self.across:
                async with step(self.emit, "carry", self.first.name):
                    await self._carry(self.first.config["Image"])
            await self.target.remove_container(self.first_id)
            self.first_id = await _create(self.target, self.first, self.ledger)
        others = self.nodes[1:]
        if not others:
            return
        image = self.first.config["Image"]
        if self._changed_rootfs:
            image = await self._commit(self.first_id, on=self.target)
        replicas = [v for v in self.plan.volumes if v.replica_of in {x.name for x in self.volumes}]
        await gather_all(self._replicate(replicas), *(self._create_other(n, image) for n in others))

    async def _create_other(self, node: NodePlan, image: str) -> None:
        node.config["Image"] = image
        async with step(self.emit, "create", node.name):
            await _create(self.target, node, self.ledger)

    async def _replicate(self, replicas: list[VolumePlan]) -> None:
        if not replicas:
            return
        pairs = [(v.replica_of or "", v.name) for v in replicas]
        async with copy_helper(
            self.target,
            image=self.settings.helper_image,
            name=f"{self.plan.name}-replicate-{self.layer.name}-{self.plan.job}",
            pairs=pairs,
            labels=self.plan.labels(),
        ) as helper:
            # from the clone's own first node's volumes, which nothing writes: no watcher
            await pre_copy(
                self.target, helper=helper, count=len(pairs), on_bytes=lambda _: None, watch="off"
            )

    def _warn(self, warning: str) -> None:
        # e.g. inotify could not watch, so a pass compared every file's stat instead
        self.emit(Warned(f"{self.first.name}: {warning}"))

    async def close(self) -> None:
        await self._resources.aclose()


async def _create(docker: DockerClient, node: NodePlan, ledger: Ledger) -> str:
    return await ledger.create_container(name=node.name, config=node.config, networks=node.networks)

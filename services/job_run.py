"""How a job runs: claimed once it may start, kept alive by its lease, its progress written.

The locks it takes (environments, a source's freeze, a slot, disk) are in ``job_locks.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

from services.context import Services
from services.errors import ClonebotError, LeaseLost, NotEnoughDisk
from services.job_locks import (
    FROZEN,
    DiskReserver,
    check_not_busy,
    free_slot,
    freeze_holder,
    is_live,
    reserved_by_others,
    serialize,
)
from services.progress import BytesCopied, Event, EventSink, StepDone, StepStarted
from services.quotas import check_copied_bytes
from storage import repositories as repo
from storage.models import Job, JobState, utcnow
from storage.outage import is_outage

log = logging.getLogger(__name__)
T = TypeVar("T")

LEASE = timedelta(seconds=30)
HEARTBEAT_S = 5.0
PROGRESS_EVERY_S = 1.0
WAIT_POLL_S = 0.2  # how often a job waiting for a slot or a freeze looks again


async def claim(svc: Services, job_id: str, *, worker: str, emit: EventSink) -> tuple[Job, bool]:
    """Claim a queued job once nothing holds what it needs and a slot is free.

    Returns the job, and whether this worker claimed it (False: another worker has it).
    Raises ``Busy`` when another job holds an environment it needs.
    """
    waited: tuple[str, float] | None = None
    while True:
        async with svc.sessions() as session, session.begin():
            await serialize(session)
            job = await repo.get_job(session, job_id)
            assert job is not None
            if job.state != JobState.QUEUED:
                return job, False
            await check_not_busy(session, job)
            reason = await free_slot(session, job_id=job_id, max_jobs=svc.settings.max_jobs)
            lease_until = utcnow() + LEASE
            if reason is None:
                await repo.claim_job(session, job_id=job_id, worker=worker, lease_until=lease_until)
                break
            # a queued job says what it waits for, and keeps its lease while its process runs
            step = f"waits for a slot (CLONEBOT_MAX_JOBS={svc.settings.max_jobs})"
            await repo.update_job(
                session, job_id, step=step, claimed_by=worker, lease_until=lease_until
            )
        if waited is None:
            emit(StepStarted("queued", None, detail=f"waits for {reason}"))
            waited = (reason, time.monotonic())
        await asyncio.sleep(WAIT_POLL_S)
    if waited is not None:
        emit(StepDone("queued", None, int((time.monotonic() - waited[1]) * 1000)))
    async with svc.sessions() as session:
        claimed = await repo.get_job(session, job_id)
    assert claimed is not None
    return claimed, True


async def run_leased(svc: Services, job_id: str, *, worker: str, work: Awaitable[T]) -> T:
    """Run ``work`` while renewing the job's lease.

    A lease that cannot be renewed (the database unreachable) or that another process took
    over stops ``work`` (it rolls back what it made) well before the lease lapses, so that
    no other host recovers a job still running; then ``LeaseLost`` is raised.
    """
    runner = asyncio.ensure_future(work)
    stop = asyncio.Event()
    keeper = asyncio.create_task(_keep_lease(svc, job_id, worker, stop=stop))
    try:
        await asyncio.wait({runner, keeper}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            return runner.result()
        reason = keeper.result()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        raise LeaseLost(f"the job stopped because {reason}; what it had made was removed")
    finally:
        # told, not cancelled: cancelled inside a renewal, the session's connection would be
        # given back to the pool half reset (SQLAlchemy logs that as an error)
        stop.set()
        if not runner.done():  # cancelled from outside: the work rolls back before we go
            runner.cancel()
        await asyncio.gather(keeper, runner, return_exceptions=True)


async def _keep_lease(svc: Services, job_id: str, worker: str, *, stop: asyncio.Event) -> str:
    """Renew the lease every HEARTBEAT_S until ``stop``; return why it is lost, once it is
    (or "" when stopped)."""
    renewed = time.monotonic()
    # gives the job two thirds of the lease to roll back before another host may recover it
    give_up_s = LEASE.total_seconds() / 3
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=HEARTBEAT_S)
        if stop.is_set():
            return ""
        try:
            async with asyncio.timeout(HEARTBEAT_S):
                async with svc.sessions() as session, session.begin():
                    ours = await repo.renew_lease(
                        session, job_id=job_id, worker=worker, lease_until=utcnow() + LEASE
                    )
        except Exception as exc:  # retried until give_up_s
            log.warning("job %s: lease not renewed: %s", job_id, exc or type(exc).__name__)
            if time.monotonic() - renewed >= give_up_s:
                why = "clonebot's database did not answer" if is_outage(exc) else "an error"
                return f"its lease could not be renewed for {give_up_s:g} s: {why} ({exc})"
            continue
        if not ours:
            return "another process took it over"
        renewed = time.monotonic()


def disk_reserver(svc: Services, job_id: str) -> DiskReserver:
    """The disk check of ``job_id``'s plan: refused beside running jobs' copies, else kept."""

    async def reserve(copy: int, reserve: int, free: int) -> None:
        async with svc.sessions() as session, session.begin():
            await serialize(session)
            job = await repo.get_job(session, job_id)
            assert job is not None
            await check_copied_bytes(session, svc.settings, job=job, copy=copy)
            others = await reserved_by_others(session, job_id=job_id)
            if copy + reserve + others > free:
                raise NotEnoughDisk(needed=copy + reserve, free=free, reserved=others)
            await repo.update_job(session, job_id, reserved_bytes=copy)

    return reserve


class JobProgress:
    """Keeps a job's steps in the database as events arrive, at most once a second for bytes.

    The record is a view of the job: a write that fails is logged and the job goes on (its
    end writes every step again).
    """

    def __init__(self, svc: Services, job_id: str, downstream: EventSink) -> None:
        self._svc, self._job_id, self._downstream = svc, job_id, downstream
        self.steps: list[dict[str, Any]] = []
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> JobProgress:
        self._writer = asyncio.create_task(self._write())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._queue.put_nowait(None)
        if self._writer is not None:
            await asyncio.shield(self._writer)

    def emit(self, event: Event) -> None:
        self._downstream(event)
        self._queue.put_nowait(event)

    async def record_frozen(self, frozen: dict[str, str], *, engine: str | None = None) -> None:
        """Written before the source is frozen: recovery must know what to resume, and where
        (``engine``, when not the job's source's: a Swarm task's node).

        Waits while another job has one of these containers frozen (see ``job_locks``).
        """
        where = {"engine": engine} if engine else {}
        entries = [{"container": cid, "how": how} | where for cid, how in frozen.items()]
        wanted = {cid for cid, how in frozen.items() if how in FROZEN}
        waited_since: float | None = None
        while (holder := await self._take_freeze(entries, wanted)) is not None:
            if waited_since is None:
                waited_since = time.monotonic()
                detail = f"job {holder.id[:4]}… has the source frozen"
                self.emit(StepStarted("wait", None, detail=detail))
            await asyncio.sleep(WAIT_POLL_S)
        if waited_since is not None:
            self.emit(StepDone("wait", None, int((time.monotonic() - waited_since) * 1000)))

    async def _take_freeze(self, entries: list[dict[str, str]], wanted: set[str]) -> Job | None:
        """Record ``entries`` unless another job has one of ``wanted`` frozen: then that job."""
        async with self._svc.sessions() as session, session.begin():
            await serialize(session)
            held = await freeze_holder(session, job_id=self._job_id, containers=wanted)
            if held is None:
                await repo.update_job(session, self._job_id, frozen=entries)
                return None
        other, container = held
        if not is_live(other, now=utcnow()):
            raise ClonebotError(
                f"source container {container[:12]} is frozen by job {other.id}, whose process "
                "is gone: `clonebot recover` resumes it"
            )
        return other

    async def _write(self) -> None:
        last = 0.0
        while (event := await self._queue.get()) is not None:
            current = self._apply(event)
            urgent = not isinstance(event, BytesCopied)
            if urgent or time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                values: dict[str, Any] = {"steps": [dict(s) for s in self.steps]}
                if current:
                    values["step"] = current
                try:
                    async with self._svc.sessions() as session, session.begin():
                        await repo.update_job(session, self._job_id, **values)
                except Exception as exc:  # a view of the job: the job goes on
                    log.warning(
                        "job %s: progress not recorded: %s", self._job_id, exc,
                        exc_info=not is_outage(exc),
                    )  # fmt: skip

    def _apply(self, event: Event) -> str | None:
        if isinstance(event, StepStarted | StepDone | BytesCopied):
            row = self._row(event.step, event.node)
            if isinstance(event, StepStarted):
                row["state"], row["since"] = "running", utcnow().isoformat()
                return event.step
            if isinstance(event, StepDone):
                row["state"], row["ms"] = "done", event.elapsed_ms
            else:
                row["copied"], row["total"] = event.copied, event.total
        return None

    def _row(self, step: str, node: str | None) -> dict[str, Any]:
        for row in self.steps:
            if row["step"] == step and row["node"] == node:
                return row
        row = {"step": step, "node": node, "state": "running"}
        self.steps.append(row)
        return row

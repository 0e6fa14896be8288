"""Durable jobs: recorded before they start, claimed once, their progress and outcome kept."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from services import access
from services.access import Request
from services.cloning import CloneResult
from services.context import Services
from services.environments import environment_exists, list_environments
from services.errors import BadRequest, ClonebotError, CloneFailed, NameTaken
from services.lifecycle import (
    clone_environment,
    delete_environment,
    refresh_clone,
    rename_environment,
)
from services.naming import default_clone_name, validate_name
from services.permissions import Action
from services.progress import BytesCopied, Event, EventSink, StepDone, StepStarted, ignore_events
from services.workers import this_worker
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import DomainBinding, EnvironmentRecord, IdempotencyKey, Job, Route, utcnow

LEASE = timedelta(seconds=30)
HEARTBEAT_S = 5.0
PROGRESS_EVERY_S = 1.0


async def submit_clone(
    svc: Services,
    request: Request,
    *,
    source: str,
    name: str | None,
    snapshot: bool = False,
    notify: str | None = None,
) -> Job:
    """Check, reserve the name and record a clone job; refusals raise before anything is kept.

    ``notify`` is the clone's notify channel, if it should have its own."""
    access.check_user(request.user)
    if name is not None:
        validate_name(name)
    async with svc.sessions() as session:
        if (earlier := await _earlier(session, request)) is not None:
            return earlier
        await access.check_request(svc, session, request, name=source, action=Action.CLONE)
        name = name or await _default_name(svc, session, source)
        await _release_stale(svc, session, name)
        session.add(
            EnvironmentRecord(
                name=name, owner=request.user, cloned_from=source, state="creating",
                notify_channel=notify,
            )
        )  # fmt: skip
        job = _new_job(request, kind="clone", environment=name, source=source)
        job.params = {"snapshot": snapshot}
        return await _record(session, request, job, action=Action.CLONE)


async def submit_refresh(svc: Services, request: Request, *, name: str) -> Job:
    return await _submit_on(svc, request, name=name, kind="refresh", action=Action.REFRESH)


async def submit_rename(svc: Services, request: Request, *, name: str, new_name: str) -> Job:
    """Check and record a rename, the new name reserved as a clone reserves its name."""
    access.check_user(request.user)
    validate_name(new_name)
    async with svc.sessions() as session:
        if (earlier := await _earlier(session, request)) is not None:
            return earlier
        await access.check_request(svc, session, request, name=name, action=Action.RENAME)
        if new_name == name:
            raise BadRequest(f"{name} is already called {new_name}")
        await _release_stale(svc, session, new_name)
        session.add(EnvironmentRecord(name=new_name, state="creating"))
        job = _new_job(request, kind="rename", environment=name, source=None)
        job.params = {"to": new_name}
        return await _record(session, request, job, action=Action.RENAME)


async def submit_delete(svc: Services, request: Request, *, name: str, force: bool) -> Job:
    """Record a delete; refused while the environment serves a custom domain or a route, as
    deleting it would take that traffic down (swap back, or remove the domain, first)."""
    return await _submit_on(
        svc, request, name=name, kind="delete", action=Action.DELETE, params={"force": force}
    )


async def _serving(session: AsyncSession, name: str) -> str | None:
    """Why deleting ``name`` would break traffic, if it would."""
    record = await repo.get_environment(session, name)
    if record is None:
        return None
    query = select(DomainBinding.domain).where(DomainBinding.environment_id == record.id)
    if domains := sorted((await session.scalars(query)).all()):
        return (
            f"{name} serves {', '.join(domains)}: swap the domains back or remove them "
            f"before deleting it"
        )
    query = select(Route.domain).where(
        or_(Route.primary_id == record.id, Route.secondary_id == record.id)
    )
    if routes := sorted((await session.scalars(query)).all()):
        return f"{name} takes part in the route of {', '.join(routes)}: change it first"
    return None


async def _submit_on(
    svc: Services,
    request: Request,
    *,
    name: str,
    kind: str,
    action: Action,
    params: dict[str, Any] | None = None,
) -> Job:
    access.check_user(request.user)
    async with svc.sessions() as session:
        if (earlier := await _earlier(session, request)) is not None:
            return earlier
        env, record = await access.check_request(svc, session, request, name=name, action=action)
        # only once allowed: a refusal must not tell a stranger what the environment serves
        if kind == "delete" and (serving := await _serving(session, name)) is not None:
            raise BadRequest(serving)
        # the record follows a source's rename; the clone's label keeps the name it was made from
        source = record.cloned_from or env.cloned_from
        job = _new_job(request, kind=kind, environment=name, source=source)
        job.params = params or {}
        return await _record(session, request, job, action=action)


async def _earlier(session: AsyncSession, request: Request) -> Job | None:
    return await repo.job_for_key(session, request.key) if request.key else None


def _new_job(request: Request, *, kind: str, environment: str, source: str | None) -> Job:
    return Job(
        id=secrets.token_hex(6),
        kind=kind,
        state="queued",
        environment=environment,
        source=source,
        requester=request.user,
        channel=request.channel,
        params={},
        steps=[],
        frozen=[],
    )


async def _record(session: AsyncSession, request: Request, job: Job, *, action: Action) -> Job:
    repo.record_audit(
        session,
        actor=request.user,
        action=action.value,
        environment=job.environment,
        channel=request.channel,
        allowed=True,
        detail={"job": job.id, "source": job.source},
    )
    try:
        session.add(job)
        # the key refers to the job: the job's row must be written first
        await session.flush()
        if request.key:
            session.add(IdempotencyKey(key=request.key, job_id=job.id))
        await session.commit()
    except IntegrityError:
        await session.rollback()
        # the same delivery recorded by a racing process, or the name taken by a racing clone
        if (earlier := await _earlier(session, request)) is not None:
            return earlier
        raise NameTaken(job.environment) from None
    return job


async def _default_name(svc: Services, session: AsyncSession, source: str) -> str:
    taken = {e.name for e in await list_environments(svc.docker)}
    taken |= {r.name for r in await repo.list_environments(session)}
    return default_clone_name(source, taken)


async def _release_stale(svc: Services, session: AsyncSession, name: str) -> None:
    """Refuse a name Docker has; forget a record whose environment is gone from Docker."""
    if await environment_exists(svc.docker, name):
        raise NameTaken(name)
    record = await repo.get_environment(session, name)
    if record is not None and record.state == "ready":
        await repo.delete_environment(session, name)


async def run_job(svc: Services, job_id: str, *, emit: EventSink = ignore_events) -> Job:
    """Claim and run a queued job; a job claimed elsewhere is returned as it stands.

    Errors are recorded on the job, then raised again for the caller to show.
    """
    worker = this_worker()
    async with svc.sessions() as session, session.begin():
        claimed = await repo.claim_job(
            session, job_id=job_id, worker=worker, lease_until=utcnow() + LEASE
        )
        job = await repo.get_job(session, job_id)
    assert job is not None
    if not claimed:
        return job
    progress = _Progress(svc, job_id, emit)
    outcome: dict[str, Any] = {"state": "succeeded"}
    try:
        async with _heartbeat(svc, job_id, worker), progress:
            result = await _dispatch(svc, job, progress)
        outcome |= _outcome(result)
    except CloneFailed as exc:
        outcome = {"state": "rolled back", "error": exc.message}
        raise
    except ClonebotError as exc:
        outcome = {"state": "failed", "error": exc.message}
        raise
    except (Exception, asyncio.CancelledError) as exc:
        outcome = {"state": "rolled back", "error": f"{type(exc).__name__}: {exc}"}
        raise
    finally:
        await asyncio.shield(_finish(svc, job, outcome, steps=progress.steps))
    return await _reload(svc, job_id)


async def _dispatch(svc: Services, job: Job, progress: _Progress) -> CloneResult | None:
    if job.kind == "clone":
        return await clone_environment(
            svc.docker,
            svc.settings,
            source=job.source or "",
            name=job.environment,
            snapshot=bool(job.params.get("snapshot")),
            job=job.id,
            owner=job.requester,
            emit=progress.emit,
            on_freeze=progress.record_frozen,
        )
    if job.kind == "refresh":
        return await refresh_clone(
            svc.docker,
            svc.settings,
            name=job.environment,
            source=job.source,
            job=job.id,
            emit=progress.emit,
            on_freeze=progress.record_frozen,
        )
    if job.kind == "rename":
        return await rename_environment(
            svc.docker,
            svc.settings,
            name=job.environment,
            new_name=job.params["to"],
            job=job.id,
            emit=progress.emit,
            on_freeze=progress.record_frozen,
        )
    await delete_environment(svc.docker, name=job.environment, force=bool(job.params.get("force")))
    return None


def _outcome(result: CloneResult | None) -> dict[str, Any]:
    if result is None:
        return {}
    return {"result": dataclasses.asdict(result), "freeze_ms": result.freeze_ms}


async def _finish(
    svc: Services, job: Job, outcome: dict[str, Any], *, steps: list[dict[str, Any]]
) -> None:
    async with svc.sessions() as session, session.begin():
        await close_job(
            session, job, action=f"{job.kind} {outcome['state']}", steps=steps, **outcome
        )


async def close_job(session: AsyncSession, job: Job, *, action: str, **values: Any) -> None:
    """Record how a job ended, settle the name it reserved, and audit it."""
    ok = values["state"] == "succeeded"
    await repo.update_job(
        session, job.id, **values, frozen=[], finished_at=utcnow(), lease_until=None
    )
    record = await repo.get_environment(session, job.environment)
    if job.kind == "clone" and record is not None and record.state == "creating":
        if ok:
            record.state = "ready"
        else:
            await repo.delete_environment(session, job.environment)
    if job.kind == "delete" and ok:
        await repo.delete_environment(session, job.environment)
    if job.kind == "rename":
        await _settle_rename(session, job, ok=ok)
    repo.record_audit(
        session,
        actor=job.requester,
        action=action,
        environment=job.environment,
        channel=job.channel,
        allowed=True,
        reason=values.get("error") or "",
        detail={"job": job.id},
    )


async def _settle_rename(session: AsyncSession, job: Job, *, ok: bool) -> None:
    """Give the record, with its domains, routes and people, the new name; or free it."""
    new_name = job.params["to"]
    reserved = await repo.get_environment(session, new_name)
    if reserved is not None and reserved.state == "creating":
        await repo.delete_environment(session, new_name)
        await session.flush()
    if not ok:
        return
    await session.execute(
        update(EnvironmentRecord).where(EnvironmentRecord.name == job.environment)
        .values(name=new_name)
    )  # fmt: skip
    await session.execute(
        update(EnvironmentRecord).where(EnvironmentRecord.cloned_from == job.environment)
        .values(cloned_from=new_name)
    )  # fmt: skip


async def _reload(svc: Services, job_id: str) -> Job:
    async with svc.sessions() as session:
        job = await repo.get_job(session, job_id)
    assert job is not None
    return job


@contextlib.asynccontextmanager
async def _heartbeat(svc: Services, job_id: str, worker: str) -> AsyncIterator[None]:
    """Keep the job's lease while it runs, so other hosts see it is alive."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            async with svc.sessions() as session, session.begin():
                await repo.renew_lease(
                    session, job_id=job_id, worker=worker, lease_until=utcnow() + LEASE
                )

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class _Progress:
    """Keeps a job's steps in the database as events arrive, at most once a second for bytes."""

    def __init__(self, svc: Services, job_id: str, downstream: EventSink) -> None:
        self._svc, self._job_id, self._downstream = svc, job_id, downstream
        self.steps: list[dict[str, Any]] = []
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Progress:
        self._writer = asyncio.create_task(self._write())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._queue.put_nowait(None)
        if self._writer is not None:
            await asyncio.shield(self._writer)

    def emit(self, event: Event) -> None:
        self._downstream(event)
        self._queue.put_nowait(event)

    async def record_frozen(self, frozen: dict[str, str]) -> None:
        """Written before the source is frozen: recovery must know what to resume."""
        entries = [{"container": cid, "how": how} for cid, how in frozen.items()]
        async with self._svc.sessions() as session, session.begin():
            await repo.update_job(session, self._job_id, frozen=entries)

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
                async with self._svc.sessions() as session, session.begin():
                    await repo.update_job(session, self._job_id, **values)

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

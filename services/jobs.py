"""Durable jobs: recorded before they start, claimed once, their progress and outcome kept."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import secrets
import time
from datetime import datetime, timedelta
from typing import Any, assert_never

from pydantic import TypeAdapter
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from services import access, metrics
from services.access import Request
from services.approvals import Change, ChangeKind, require
from services.cloning import CloneResult
from services.context import Services
from services.errors import (
    BadRequest,
    Busy,
    ClonebotError,
    CloneFailed,
    HookFailed,
    LeaseLost,
    NameTaken,
    NotAClone,
    NotEnoughDisk,
    size_text,
)
from services.fleet import ANSWER_S, EngineUnreachable
from services.freeze import resume_recorded
from services.job_locks import JobKind, check_not_busy, job_kind, reserving_disk, serialize
from services.job_run import LEASE, JobProgress, claim, disk_reserver, run_leased
from services.ledger import sweep_job
from services.lifecycle import (
    check_delete,
    clone_environment,
    delete_environment,
    refresh_clone,
    rename_environment,
)
from services.located import check_name_free_everywhere
from services.log_context import job_logged
from services.naming import default_clone_name, held_names, validate_name
from services.permissions import Action
from services.placement import roomiest_engine
from services.progress import EventSink, Warned, ignore_events
from services.quotas import check_clone_count
from services.sleep import Stopped, start_environment, stop_environment
from services.swarm import (
    clone_stack,
    delete_stack,
    refresh_stack,
    start_stack,
    stop_stack,
)
from services.ttl import clone_expiry, may_keep, original_source
from services.workers import this_worker
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import (
    DomainBinding,
    EnvironmentRecord,
    IdempotencyKey,
    Job,
    JobState,
    Route,
    utcnow,
)
from storage.outage import patiently

log = logging.getLogger(__name__)


async def submit_clone(
    svc: Services,
    request: Request,
    *,
    source: str,
    name: str | None,
    snapshot: bool = False,
    notify: str | None = None,
    ttl: str | None = None,
    on: str | None = None,
) -> Job:
    """Check, reserve the name and record a clone job; refusals raise before anything is kept.

    ``notify`` is the clone's notify channel, if it should have its own; ``ttl`` its life as
    the user typed it (``3d``, ``never``), else ``CLONEBOT_DEFAULT_TTL``; ``on`` the engine
    to make it on (else the source's)."""
    access.check_user(request.user)
    if name is not None:
        validate_name(name)
    if on is not None:  # before the session: its wait must not hold the database
        await _answers(svc, on)
    async with svc.sessions() as session:
        if (earlier := await _earlier(session, request)) is not None:
            return earlier
        env, _ = await access.check_request(svc, session, request, name=source, action=Action.CLONE)
        if env.kind == "stack" and on not in (None, env.engine):
            raise BadRequest(f"{source} is a Swarm stack: it is cloned on its own Swarm, not --on")
        engine = _target_engine(svc, env.engine, on)
        await serialize(session)  # two clones asked at once are counted one after the other
        async with access.audited_refusals(
            session, request, action=Action.CLONE, environment=source
        ):
            await check_clone_count(session, svc.settings, user=request.user)
            origin = await original_source(session, source)
            keep = await may_keep(svc, session, user=request.user, origin=origin)
            expires = clone_expiry(svc.settings, ttl=ttl, may_keep=keep, source=origin)
        name = name or await _default_name(svc.on(engine), session, source)
        await _check_free(svc, session, name)
        session.add(
            EnvironmentRecord(
                name=name, owner=request.user, cloned_from=source, state="creating",
                notify_channel=notify, expires_at=expires, engine=engine,
            )
        )  # fmt: skip
        job = _new_job(request, kind="clone", environment=name, source=source, engine=engine)
        job.source_engine = env.engine
        # an engine named is kept to; else a source's engine without room gives way to another
        job.params = job.params | {"snapshot": snapshot} | ({"on": engine} if on else {})
        if env.kind == "stack":
            job.params |= {"stack": True}
        return await _record(session, request, job, action=Action.CLONE)


async def _answers(svc: Services, engine: str) -> None:
    """An engine clonebot has, and that answers: else a refusal naming it, nothing kept."""
    svc.fleet.spec(engine)
    try:
        async with asyncio.timeout(ANSWER_S):
            await svc.on(engine).docker.info()
    except TimeoutError:
        raise EngineUnreachable(engine, f"no answer in {ANSWER_S:.0f} s") from None
    except ClonebotError as exc:
        raise EngineUnreachable(engine, exc.message) from exc


def _target_engine(svc: Services, source_engine: str, on: str | None) -> str:
    """The engine a clone is made on: the source's, unless asked otherwise."""
    if on is None or on == source_engine:
        return source_engine
    return svc.fleet.spec(on).name  # an engine clonebot has, or a refusal naming it


async def submit_refresh(svc: Services, request: Request, *, name: str) -> Job:
    """Check and record a refresh. Its source is frozen and copied for it, so the requester
    needs the right to clone the source too (from the channel asked in, if it is bound)."""
    return await _submit_on(svc, request, name=name, kind="refresh", action=Action.REFRESH)


async def submit_rename(svc: Services, request: Request, *, name: str, new_name: str) -> Job:
    """Check and record a rename, the new name reserved as a clone reserves its name."""
    access.check_user(request.user)
    validate_name(new_name)
    async with svc.sessions() as session:
        if (earlier := await _earlier(session, request)) is not None:
            return earlier
        env, record = await access.check_request(
            svc, session, request, name=name, action=Action.RENAME
        )
        args = {"name": name, "new_name": new_name}
        change = Change(ChangeKind.RENAME, args, Action.RENAME, (name,))
        await require(svc, session, request, change=change, records=[record])
        if new_name == name:
            raise BadRequest(f"{name} is already called {new_name}")
        await _check_free(svc, session, new_name, renaming=name)
        session.add(EnvironmentRecord(name=new_name, state="creating"))
        job = _new_job(request, kind="rename", environment=name, source=None, engine=env.engine)
        job.params = job.params | {"to": new_name}
        return await _record(session, request, job, action=Action.RENAME)


async def submit_delete(
    svc: Services, request: Request, *, name: str, force: bool, why: str | None = None
) -> Job:
    """Record a delete; refused while the environment serves a custom domain or a route, as
    deleting it would take that traffic down (swap back, or remove the domain, first).

    An environment that is down (recorded, no container) may be deleted: that frees its name;
    the volumes it left go only with ``force``, as a source's do."""
    params: dict[str, Any] = {"force": force} | ({"why": why} if why else {})
    return await _submit_on(
        svc, request, name=name, kind="delete", action=Action.DELETE, params=params
    )


async def submit_stop(
    svc: Services, request: Request, *, name: str, why: Stopped = Stopped.ASKED
) -> Job:
    """Record stopping a clone (asleep, or expired); refused while it serves a custom domain
    or takes part in a route (a failover backup gets no requests, and must stay up)."""
    return await _submit_on(
        svc, request, name=name, kind="stop", action=Action.SLEEP, params={"why": why.value}
    )


async def submit_start(svc: Services, request: Request, *, name: str) -> Job:
    """Record starting a stopped clone again."""
    return await _submit_on(svc, request, name=name, kind="start", action=Action.SLEEP)


async def serving_reason(
    session: AsyncSession, name: str, *, doing: str = "deleting"
) -> str | None:
    """Why ``doing`` ``name`` (deleting, stopping) would break traffic, if it would."""
    record = await repo.get_environment(session, name)
    if record is None:
        return None
    query = select(DomainBinding.domain).where(DomainBinding.environment_id == record.id)
    if domains := sorted((await session.scalars(query)).all()):
        return (
            f"{name} serves {', '.join(domains)}: swap the domains back or remove them "
            f"before {doing} it"
        )
    query = select(Route.domain).where(
        or_(Route.primary_id == record.id, Route.secondary_id == record.id)
    )
    if routes := sorted((await session.scalars(query)).all()):
        return f"{name} takes part in the route of {', '.join(routes)}: change it before {doing} it"
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
        check = access.check_recorded if kind == "delete" else access.check_request
        env, record = await check(svc, session, request, name=name, action=action)
        if (change := _approved_change(kind, name, action, params)) is not None:
            await require(svc, session, request, change=change, records=[record])
        # only once allowed: a refusal must not tell a stranger what the environment serves
        if kind in _STOPS and (serving := await serving_reason(session, name, doing=_STOPS[kind])):
            raise BadRequest(serving)
        engine = env.engine if env is not None else record.engine
        if kind == "delete":
            force = bool((params or {}).get("force"))
            if env is not None and env.kind == "stack":
                if env.cloned_from is None and not force:
                    raise NotAClone(name, "delete (without --force)")
            else:
                await check_delete(svc.on(engine).docker, name=name, force=force)
        if env is not None and env.kind == "stack":  # services/swarm.py does the work
            params = (params or {}) | {"stack": True}
        # the record follows a source's rename; the clone's label keeps the name it was made from
        source = record.cloned_from or (env.cloned_from if env is not None else None)
        if kind in ("stop", "start") and source is None:  # a source is never stopped by us
            raise NotAClone(name, kind)
        if kind == "start" and record.stopped == Stopped.EXPIRED and _past(record.expires_at):
            raise BadRequest(f"{name} expired and was stopped: extend it (`/env extend {name} 1d`)")
        job = _new_job(request, kind=kind, environment=name, source=source, engine=engine)
        if kind == "refresh":  # its source is frozen, on its own engine
            job.source_engine = await _check_source(
                svc, session, request, clone=name, source=source
            )
        job.params = job.params | (params or {})
        return await _record(session, request, job, action=action)


_STOPS = {"delete": "deleting", "stop": "stopping"}  # what would take traffic down


def _approved_change(
    kind: str, name: str, action: Action, params: dict[str, Any] | None
) -> Change | None:
    """The change a job of ``kind`` makes, as a protected environment's approval binds it."""
    if kind == "delete":
        args = {"name": name, "force": bool((params or {}).get("force"))}
        return Change(ChangeKind.DELETE, args, action, (name,))
    if kind == "refresh":
        return Change(ChangeKind.REFRESH, {"name": name}, action, (name,))
    return None


async def _earlier(session: AsyncSession, request: Request) -> Job | None:
    return await repo.job_for_key(session, request.key) if request.key else None


def _new_job(
    request: Request, *, kind: str, environment: str, source: str | None, engine: str
) -> Job:
    """A queued job; its params start with the approval it was asked with, if any (its run
    checks protection again: one protected meanwhile needs it)."""
    return Job(
        id=secrets.token_hex(6),
        kind=kind,
        state=JobState.QUEUED,
        environment=environment,
        source=source,
        requester=request.user,
        channel=request.channel,
        params={"approval": request.approval} if request.approval else {},
        steps=[],
        frozen=[],
        engine=engine,
    )


async def _record(session: AsyncSession, request: Request, job: Job, *, action: Action) -> Job:
    repo.record_audit(
        session,
        actor=request.user,
        action=action.value,
        environment=job.environment,
        channel=request.channel,
        allowed=True,
        detail={"job": job.id, "source": job.source, **job.params},
    )
    try:
        # the name's reservation, added by the caller, is written first (its query would
        # flush it anyway): a racing clone's shows here as an IntegrityError
        await session.flush()
        # nothing else checks or takes a lock meanwhile: two conflicting jobs cannot both pass
        await serialize(session)
        await check_not_busy(session, job)
    except IntegrityError:
        return await _raced(session, request, job)
    except Busy as exc:  # refused like any other refusal: audited, nothing else kept
        await session.rollback()
        repo.record_audit(
            session,
            actor=request.user,
            action=action.value,
            environment=job.environment,
            channel=request.channel,
            allowed=False,
            reason=exc.message,
            detail={"held by": exc.job},
        )
        await session.commit()
        raise
    try:
        job.claimed_by, job.lease_until = this_worker(), utcnow() + LEASE
        session.add(job)
        # the key refers to the job: the job's row must be written first
        await session.flush()
        if request.key:
            session.add(IdempotencyKey(key=request.key, job_id=job.id))
        await session.commit()
    except IntegrityError:
        return await _raced(session, request, job)
    return job


async def _raced(session: AsyncSession, request: Request, job: Job) -> Job:
    """The same delivery recorded by a racing process, or the name taken by a racing clone."""
    await session.rollback()
    if (earlier := await _earlier(session, request)) is not None:
        return earlier
    raise NameTaken(job.environment) from None


async def _default_name(svc: Services, session: AsyncSession, source: str) -> str:
    """``<source>-clone<N>``, skipping every name something holds."""
    recorded = [r.name for r in await repo.list_environments(session)]
    return default_clone_name(source, await held_names(svc.docker, recorded=recorded))


async def _check_free(
    svc: Services, session: AsyncSession, name: str, *, renaming: str | None = None
) -> None:
    """Refuse a name anything holds: what Docker has of its project, or its record. An
    environment that is down keeps its record (owner, people, channels, domains, routes):
    only a delete or an admin's ``forget`` frees its name."""
    await check_name_free_everywhere(svc, name=name, renaming=renaming)
    record = await repo.get_environment(session, name)
    # one a job reserves ("creating") is refused by the reservation's unique name, which also
    # tells a retried delivery of the same request from a second one
    if record is not None and record.state == "ready":
        raise NameTaken(
            name, f"{name} is down; its record keeps its owner until it is deleted or forgotten"
        )


async def _check_source(
    svc: Services, session: AsyncSession, request: Request, *, clone: str, source: str | None
) -> str:
    """A refresh freezes its source and copies its data: it needs the clone right there.
    Returns the source's engine."""
    if source is None:
        raise NotAClone(clone, "refresh")
    env, _ = await access.check_request(svc, session, request, name=source, action=Action.CLONE)
    return env.engine


async def _recheck(svc: Services, job: Job) -> None:
    """The checks of its submission again, as the job starts: an environment may have changed
    hands, or a volume come into the name, since it was asked for."""
    request = Request(job.requester, job.channel)
    kind = job_kind(job)
    async with svc.sessions() as session:
        match kind:
            case JobKind.CLONE:
                env, _ = await access.check_request(
                    svc, session, request, name=job.source or "", action=Action.CLONE
                )
                await check_name_free_everywhere(svc, name=job.environment)
                _moved(job, env.engine)
            case JobKind.REFRESH:
                await access.check_request(
                    svc, session, request, name=job.environment, action=Action.REFRESH
                )
                source = job.source
                engine = await _check_source(
                    svc, session, request, clone=job.environment, source=source
                )
                _moved(job, engine)
            case JobKind.RENAME:
                await access.check_request(
                    svc, session, request, name=job.environment, action=Action.RENAME
                )
                new_name = job.params["to"]
                await check_name_free_everywhere(svc, name=new_name, renaming=job.environment)
            case JobKind.DELETE:
                await access.check_recorded(
                    svc, session, request, name=job.environment, action=Action.DELETE
                )
                # a domain bound, or a route made, while the delete waited for a slot
                if (serving := await serving_reason(session, job.environment)) is not None:
                    raise BadRequest(serving)
            case JobKind.STOP | JobKind.START:
                await access.check_request(
                    svc, session, request, name=job.environment, action=Action.SLEEP
                )
                serving = await serving_reason(session, job.environment, doing="stopping")
                if kind is JobKind.STOP and serving is not None:
                    raise BadRequest(serving)
            case None:  # ``_dispatch`` refuses it
                return
            case _:
                assert_never(kind)
        await _recheck_record(svc, session, job, kind)


def _moved(job: Job, source_engine: str) -> None:
    """The source is found on another engine than when the job was asked (a project moved):
    never copied from where it no longer is."""
    if job.source_engine is not None and source_engine != job.source_engine:
        raise BadRequest(
            f"{job.source} moved from engine {job.source_engine} to {source_engine} since "
            "this was asked: ask again"
        )


async def _recheck_record(svc: Services, session: AsyncSession, job: Job, kind: JobKind) -> None:
    """What may have changed in the record since the job was asked: protected (its change
    then needs an approval), or extended (an expiry's stop or delete no longer due)."""
    record = await repo.get_environment(session, job.environment)
    if record is None:
        return
    name = job.environment
    if kind in _PROTECTED_KINDS and record.protected and not job.params.get("approval"):
        raise BadRequest(f"{name} was protected since this was asked: ask again, to be approved")
    if job.params.get("why") == Stopped.EXPIRED:
        grace = svc.settings.expiry_grace if kind is JobKind.DELETE else timedelta(0)
        if record.expires_at is None or grace is None or utcnow() < record.expires_at + grace:
            raise BadRequest(f"{name} was extended meanwhile: its expiry is not due")


_PROTECTED_KINDS = (JobKind.DELETE, JobKind.RENAME, JobKind.REFRESH)


def _past(moment: datetime | None) -> bool:
    return moment is not None and moment <= utcnow()


async def run_job(svc: Services, job_id: str, *, emit: EventSink = ignore_events) -> Job:
    """Claim and run a queued job; a job claimed elsewhere is returned as it stands.

    Errors are recorded on the job, then raised again for the caller to show. Every line
    logged meanwhile names the job (``log_context``).
    """
    with job_logged(job_id):
        return await _run_job(svc, job_id, emit=emit)


async def _run_job(svc: Services, job_id: str, *, emit: EventSink) -> Job:
    worker = this_worker()
    try:  # waits while CLONEBOT_MAX_JOBS jobs run, saying so
        job, claimed = await claim(svc, job_id, worker=worker, emit=emit)
    except Busy as exc:  # an environment it needs was taken since it was recorded
        await _refuse(svc, job_id, exc)
        raise
    if not claimed:
        return job
    progress = JobProgress(svc, job_id, emit)

    async def work() -> CloneResult | None:
        await _recheck(svc, job)
        return await _dispatch(svc.on(job.engine), job, progress)

    outcome: dict[str, Any] = {"state": JobState.SUCCEEDED}
    started = time.monotonic()
    try:
        async with progress:
            with reserving_disk(disk_reserver(svc, job_id)):
                result = await run_leased(svc, job_id, worker=worker, work=work())
        outcome |= _outcome(result)
    except (CloneFailed, LeaseLost) as exc:
        outcome = {"state": JobState.ROLLED_BACK, "error": exc.message}
        if isinstance(exc, HookFailed):  # the record keeps the hooks' masked output
            outcome["result"] = {"hooks": [dataclasses.asdict(run) for run in exc.runs]}
        raise
    except ClonebotError as exc:
        outcome = {"state": JobState.FAILED, "error": exc.message}
        raise
    except (Exception, asyncio.CancelledError) as exc:
        outcome = {"state": JobState.ROLLED_BACK, "error": f"{type(exc).__name__}: {exc}"}
        raise
    finally:
        seconds = time.monotonic() - started
        metrics.observe_job(kind=job.kind, outcome=outcome["state"], seconds=seconds)
        log.info("%s of %s %s in %.1f s", job.kind, job.environment, outcome["state"], seconds)
        await asyncio.shield(_finish(svc, job, outcome, steps=progress.steps, worker=worker))
    return await _reload(svc, job_id)


async def _refuse(svc: Services, job_id: str, exc: Busy) -> None:
    async with svc.sessions() as session, session.begin():
        job = await repo.get_job(session, job_id)
        assert job is not None
        await close_job(
            session, job, action=f"{job.kind} failed", state=JobState.FAILED, error=exc.message
        )


async def _dispatch(svc: Services, job: Job, progress: JobProgress) -> CloneResult | None:
    kind = job_kind(job)
    if kind is None:  # a newer clonebot's job, say: never guessed at
        raise BadRequest(f"job {job.id} is of a kind this clonebot does not know: {job.kind!r}")
    match kind:
        case JobKind.CLONE:
            return await _clone(svc, job, progress)
        case JobKind.REFRESH:
            if job.params.get("stack"):
                return await refresh_stack(
                    svc, engine=job.engine, name=job.environment, job=job.id,
                    emit=progress.emit, on_freeze=progress.record_frozen,
                )  # fmt: skip
            return await refresh_clone(
                svc.docker,
                svc.settings,
                source_docker=svc.on(job.source_engine or job.engine).docker,
                name=job.environment,
                source=job.source,
                job=job.id,
                emit=progress.emit,
                on_freeze=progress.record_frozen,
            )
        case JobKind.RENAME:
            return await rename_environment(
                svc.docker,
                svc.settings,
                name=job.environment,
                new_name=job.params["to"],
                job=job.id,
                emit=progress.emit,
                on_freeze=progress.record_frozen,
            )
        case JobKind.DELETE:
            if job.params.get("stack"):
                await delete_stack(svc, engine=job.engine, name=job.environment)
                return None
            force = bool(job.params.get("force"))
            await delete_environment(svc.docker, name=job.environment, force=force)
            return None
        case JobKind.STOP:
            # recorded first: a stop cut short (an error, serve stopping) leaves a clone
            # partly stopped, which its record must say, for its page and `wake`
            await _record_stopped(svc, job.environment, why=str(job.params.get("why")))
            if job.params.get("stack"):
                return await stop_stack(svc, engine=job.engine, name=job.environment, job=job.id)
            return await stop_environment(
                svc.docker, name=job.environment, job=job.id, emit=progress.emit
            )
        case JobKind.START:
            if job.params.get("stack"):
                return await start_stack(svc, engine=job.engine, name=job.environment, job=job.id)
            return await start_environment(
                svc.docker, name=job.environment, job=job.id, emit=progress.emit
            )
        case _:
            assert_never(kind)


async def _clone(svc: Services, job: Job, progress: JobProgress) -> CloneResult:
    """From the source's engine onto the job's; when that is the source's own, lacks room,
    and no engine was named, onto the engine with the most free disk, saying so. A Swarm
    stack is cloned on its own Swarm."""
    if job.params.get("stack"):
        return await clone_stack(
            svc, engine=job.engine, source=job.source or "", name=job.environment, job=job.id,
            owner=job.requester, emit=progress.emit, on_freeze=progress.record_frozen,
        )  # fmt: skip
    run = functools.partial(
        clone_environment,
        svc.on(job.source_engine or job.engine).docker,
        svc.settings,
        source=job.source or "",
        name=job.environment,
        snapshot=bool(job.params.get("snapshot")),
        job=job.id,
        owner=job.requester,
        emit=progress.emit,
        on_freeze=progress.record_frozen,
    )
    try:
        return await run(target=svc.docker)
    except NotEnoughDisk as exc:  # refused while planning: nothing was made
        if job.params.get("on") or svc.fleet.single:
            raise
        room = await roomiest_engine(svc, besides=job.engine, needed=exc.needed, job=job.id)
        if room is None:
            raise
        progress.emit(
            Warned(
                f"engine {job.engine} lacks room ({exc.message}): cloning onto engine "
                f"{room.engine} instead, which has the most free disk ({size_text(room.free)})"
            )
        )
        await _move(svc, job, room.engine)
        return await run(target=svc.on(room.engine).docker)


async def _move(svc: Services, job: Job, engine: str) -> None:
    """The job, and the clone's record, now on ``engine``."""
    async with svc.sessions() as session, session.begin():
        await repo.update_job(session, job.id, engine=engine)
        await session.execute(
            update(EnvironmentRecord)
            .where(EnvironmentRecord.name == job.environment)
            .values(engine=engine)
        )
    job.engine = engine


async def _record_stopped(svc: Services, name: str, *, why: str) -> None:
    async with svc.sessions() as session, session.begin():
        await session.execute(
            update(EnvironmentRecord).where(EnvironmentRecord.name == name).values(stopped=why)
        )


def _outcome(result: CloneResult | None) -> dict[str, Any]:
    if result is None:
        return {}
    return {"result": dataclasses.asdict(result), "freeze_ms": result.freeze_ms}


async def _finish(
    svc: Services, job: Job, outcome: dict[str, Any], *, steps: list[dict[str, Any]], worker: str
) -> None:
    """Record the outcome, unless another process took the job over (its recovery's to say).

    A database that is away (restarting) is waited for: recovery would not close the job
    while this process lives, and it would stay running.
    """

    await _sweep(svc, job, outcome)

    async def record() -> None:
        keep_frozen = not await _sources_resumed(svc, job.id)
        async with svc.sessions() as session, session.begin():
            current = await repo.get_job(session, job.id)
            if current is None or (current.state, current.claimed_by) != (JobState.RUNNING, worker):
                log.warning("job %s was taken over; its outcome is not recorded here", job.id)
                return
            await close_job(
                session,
                job,
                action=f"{job.kind} {outcome['state']}",
                steps=steps,
                keep_frozen=keep_frozen,
                **outcome,
            )

    try:
        await patiently(record, what=f"job {job.id}: its outcome")
    except Exception:  # the job stays running with a lapsing lease: recovery closes it
        log.exception("job %s: outcome not recorded (%s)", job.id, outcome["state"])


async def _sweep(svc: Services, job: Job, outcome: dict[str, Any]) -> None:
    """A clone that did not succeed leaves nothing: its rollback may have met the engine
    restarting, so whatever still carries the job's label goes once the engine answers."""
    if job.kind != JobKind.CLONE or outcome["state"] == JobState.SUCCEEDED:
        return
    for engine in job_engines(job):  # the source's holds its helpers and commits meanwhile
        try:
            if removed := await sweep_job(svc.on(engine).docker, job.id):
                log.warning(
                    "job %s: removed %d resource(s) its rollback had left on engine %s",
                    job.id, removed, engine,
                )  # fmt: skip
        except ClonebotError as exc:
            log.warning("job %s: what it made is not all removed: %s", job.id, exc.message)


def job_engines(job: Job) -> list[str]:
    """The engines a job works on: its own, and its source's when that is another."""
    return list(dict.fromkeys(e for e in (job.engine, job.source_engine) if e is not None))


async def _sources_resumed(svc: Services, job_id: str) -> bool:
    """Whether no source is left frozen by the job. Its freeze clears its record once they
    run again; one it could not resume (the engine failed it) is tried once more here, and
    if it still fails, stays in the record for recovery to resume."""
    async with svc.sessions() as session:
        current = await repo.get_job(session, job_id)
    if current is None or not current.frozen:
        return True
    try:
        await resume_recorded(
            svc.on(current.source_engine or current.engine).docker, current.frozen
        )
    except ClonebotError:
        log.exception("job %s: a source it froze cannot be resumed yet", job_id)
        return False
    return True


async def close_job(
    session: AsyncSession, job: Job, *, action: str, keep_frozen: bool = False, **values: Any
) -> None:
    """Record how a job ended, settle the name it reserved, and audit it. ``keep_frozen``
    leaves the record of sources it froze for recovery (they could not be resumed)."""
    ok = values["state"] == JobState.SUCCEEDED
    copied = await _copied_bytes(session, job) if ok else None
    if not keep_frozen:
        values["frozen"] = []
    await repo.update_job(
        session,
        job.id,
        **values,
        reserved_bytes=0,
        finished_at=utcnow(),
        lease_until=None,
    )
    record = await repo.get_environment(session, job.environment)
    if copied is not None and record is not None:  # what counts against its owner's quota
        record.copied_bytes = copied
    await _settle_record(session, job, record, ok=ok)
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


async def _settle_record(
    session: AsyncSession, job: Job, record: EnvironmentRecord | None, *, ok: bool
) -> None:
    """What the job's end means for its environment's record."""
    kind = job_kind(job)
    match kind:
        case JobKind.CLONE:  # the name it reserved: kept, or freed
            if record is not None and record.state == "creating":
                if ok:
                    record.state = "ready"
                else:
                    await repo.delete_environment(session, job.environment)
        case JobKind.DELETE:
            if ok:
                await repo.delete_environment(session, job.environment)
        case JobKind.RENAME:
            await _settle_rename(session, job, ok=ok)
        case JobKind.STOP | JobKind.START:  # why it is stopped, while it is
            if ok and record is not None:
                record.stopped = job.params.get("why") if kind is JobKind.STOP else None
        case JobKind.REFRESH | None:
            pass
        case _:
            assert_never(kind)


async def _copied_bytes(session: AsyncSession, job: Job) -> int | None:
    """What a clone's or refresh's copy wrote (its reservation, before it is released)."""
    if job.kind not in (JobKind.CLONE, JobKind.REFRESH):
        return None
    current = await repo.get_job(session, job.id)
    return current.reserved_bytes if current is not None else None


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


_RESULT: TypeAdapter[CloneResult] = TypeAdapter(CloneResult)


def job_result(job: Job) -> CloneResult | None:
    """What a job made, typed, as its record keeps it (None for a job that made nothing: a
    delete, or a job that failed before it ended). A record an older clonebot wrote lacks
    newer fields: they take their defaults."""
    if not job.result:
        return None
    known = {"job": job.id, "environment": job.environment, "source": job.source or ""}
    return _RESULT.validate_python(known | {"state": job.state} | job.result)

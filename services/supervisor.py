"""The long-running side of clonebot: recover at start, then run what was left queued."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from sqlalchemy import select

from services.context import Services, refresh_engines
from services.errors import ClonebotError, DockerUnavailable
from services.expiry import ExpirySink, log_notice, sweep_expiry
from services.idle import IdleWatch, SleepSink, ignore_notices
from services.jobs import run_job
from services.recovery import recover_jobs
from services.schedules import ScheduleSink, sweep_schedules
from services.schedules import log_notice as log_schedule_notice
from services.traffic.certificates import push_certificates
from services.traffic.haproxy import (
    TLS,
    EmbeddedHAProxy,
    RouterFailed,
    RouterFiles,
    RuntimeAPI,
    locked,
)
from services.traffic.renewals import RenewalSink, sweep_renewals, unrenewed
from services.traffic.renewals import ignore_notices as ignore_renewal_notices
from services.traffic.router import (
    RouterState,
    apply_routes,
    latest_nodes,
    router_config,
    router_state,
    stamp_listing,
    web_nodes,
)
from services.workers import worker_is_gone
from storage import repositories as repo
from storage.models import Job, JobState, utcnow
from storage.outage import is_outage

log = logging.getLogger(__name__)
# a job its submitter has not started by then was orphaned between recording and running
ORPHANED_AFTER = timedelta(seconds=10)
# Slack retries a delivery within minutes; a key older than this is of no more use
KEYS_KEPT = timedelta(days=1)


@dataclass(frozen=True)
class Tellers:
    """How the sweeps of ``serve`` tell owners and teams what they did (a front door words it;
    by default the log says it)."""

    expiry: ExpirySink = log_notice
    schedule: ScheduleSink = log_schedule_notice
    sleep: SleepSink = ignore_notices
    renewal: RenewalSink = ignore_renewal_notices


async def serve(
    svc: Services,
    *,
    stop: asyncio.Event,
    poll_s: float = 1.0,
    recover_every_s: float = 30.0,
    on_recovered: Callable[[list[Job]], None] = lambda jobs: None,
    router: bool = True,
    tell: Tellers | None = None,
) -> None:
    """Recover jobs of dead processes, then keep running orphaned queued jobs until ``stop``.

    Idempotency keys older than KEYS_KEPT are forgotten at start and at every recovery.

    With a router, HAProxy is started and kept equal to the database's routes (and restarted
    with them if it dies).

    Every CLONEBOT_EXPIRY_CHECK seconds, clones are reminded of their expiry, stopped or
    deleted (``services.expiry``). Then clones whose refresh schedule is due are refreshed
    (``services.schedules``). With a router, every round, clones idle for CLONEBOT_SLEEP_AFTER
    are stopped and those asleep woken by a request (``services.idle``), and certificates HAProxy
    has not taken yet given to it again (``certificates.push_certificates``); at start, then every
    CLONEBOT_ACME_RENEW_CHECK seconds (sooner when one is due sooner), ACME certificates due are
    renewed (``services.traffic.renewals``). ``tell`` tells owners and teams what these did.

    The sweeps and the idle watch run beside the loop (``_Beside``): their jobs (a refresh, a
    wake) may take minutes, and must not hold up the router or the recovery.
    """
    on_recovered(await recover_jobs(svc))
    await _expire_keys(svc)
    last_recovery = time.monotonic()
    last_expiry = -math.inf

    tell = tell or Tellers()
    # by the process that runs the router: it owns how the router serves HTTPS
    renewing = router and svc.settings.acme_directory is not None
    renewals = _RenewalCheck(svc, notify=tell.renewal) if renewing else None
    if not renewing:
        await _warn_unrenewed(svc, router=router)

    async with contextlib.AsyncExitStack() as stack:
        keeper = await stack.enter_async_context(_RouterKeeper(svc)) if router else None
        idle = _idle_watch(svc, notify=tell.sleep) if router else None
        beside = await stack.enter_async_context(_Beside())
        while not stop.is_set():
            try:
                await refresh_engines(svc)  # those added by the command line meanwhile
                if idle is not None:
                    beside.start("idle watch", idle.check)
                # not while a clone wakes: its page stays until one of its nodes listens
                if keeper is not None and not (idle is not None and idle.waking):
                    await keeper.keep()
                await _run_orphans(svc)
                if time.monotonic() - last_expiry >= svc.settings.expiry_check_s:
                    last_expiry = time.monotonic()
                    # apart: an hour-long refresh must not hold up an hour-before reminder
                    beside.start("expiry", partial(sweep_expiry, svc, notify=tell.expiry))
                    beside.start("schedules", partial(sweep_schedules, svc, notify=tell.schedule))
                if renewals is not None and renewals.take_turn():
                    beside.start("renewals", renewals.sweep)
                if time.monotonic() - last_recovery >= recover_every_s:
                    on_recovered(await recover_jobs(svc))
                    await _expire_keys(svc)
                    last_recovery = time.monotonic()
            except DockerUnavailable as exc:  # the engine restarting: the next round retries
                log.warning("%s; trying again", exc.message)
            except Exception as exc:  # the database away (restarting): the same
                if not is_outage(exc):
                    raise
                log.warning("the database does not answer (%s); trying again", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=poll_s)


class _Beside:
    """Work that runs beside the loop, one task of each name at a time: a round that finds the
    last one still running starts none. Stopped (its jobs rolled back) when the block ends."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def __aenter__(self) -> _Beside:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def start(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        running = self._tasks.get(name)
        if running is None or running.done():
            self._tasks[name] = asyncio.create_task(_logged(name, work))


async def _logged(name: str, work: Callable[[], Awaitable[None]]) -> None:
    """``work``; what stops it is logged, and the next round tries again."""
    try:
        await work()
    except DockerUnavailable as exc:  # the engine restarting
        log.warning("%s: %s; trying again", name, exc.message)
    except Exception as exc:
        if is_outage(exc):  # the database away (restarting)
            log.warning("%s: the database does not answer (%s); trying again", name, exc)
        else:
            log.exception("%s failed; trying again", name)


class _RenewalCheck:
    """When `serve` looks for ACME certificates to renew: at start, then every
    CLONEBOT_ACME_RENEW_CHECK seconds, sooner when the database says one is due sooner (a
    short-lived certificate). What a look renews, the database says (``Certificate.renew_at``):
    a restart renews nothing sooner, a restart loop orders nothing more."""

    def __init__(self, svc: Services, *, notify: RenewalSink) -> None:
        self._svc, self._notify = svc, notify
        self._next = -math.inf  # time.monotonic()'s

    def take_turn(self) -> bool:
        """Whether to look now; if so, the next look is at most a minute on unless the look
        says when (it may fail: the database away)."""
        if time.monotonic() < self._next:
            return False
        self._next = time.monotonic() + min(self._svc.settings.acme_renew_check_s, 60.0)
        return True

    async def sweep(self) -> None:
        upcoming = await sweep_renewals(self._svc, notify=self._notify)
        check_s = self._svc.settings.acme_renew_check_s
        if upcoming is not None:
            # at least a second on: a look does not spin on what it just failed to renew
            check_s = min(check_s, max((upcoming - utcnow()).total_seconds(), 1.0))
        self._next = time.monotonic() + check_s


async def _warn_unrenewed(svc: Services, *, router: bool) -> None:
    """Said at start: ACME certificates this `serve` will let expire."""
    count = await unrenewed(svc)
    if not count:
        return
    why = (
        "CLONEBOT_ACME_DIRECTORY is not set"
        if svc.settings.acme_directory is None
        else "it runs no router (--no-router): the serve that does renews them"
    )
    log.warning("%d ACME certificate(s) will not be renewed by this serve: %s", count, why)


def _idle_watch(svc: Services, *, notify: SleepSink) -> IdleWatch:
    assert svc.settings.router_dir is not None
    return IdleWatch(svc, api=RuntimeAPI(RouterFiles(svc.settings.router_dir).api), notify=notify)


async def _run_orphans(svc: Services) -> None:
    for job in await _orphaned_queued(svc):
        try:
            await run_job(svc, job.id)
        except ClonebotError as exc:  # recorded on the job; the worker goes on
            log.warning("job %s ended: %s", job.id, exc.message)


class _RouterKeeper:
    """HAProxy reconciled to the routes whenever they or HAProxy change.

    Embedded: clonebot's own HAProxy, started, restarted if it dies, and stopped with serve.
    External: an HAProxy run by others, reading the router folder; clonebot writes the
    files and, while it answers, brings it to the routes.
    """

    def __init__(self, svc: Services) -> None:
        assert svc.settings.router_dir is not None
        self._svc = svc
        self._files = RouterFiles(svc.settings.router_dir)
        embedded = svc.settings.router_mode == "embedded"
        self._router = EmbeddedHAProxy(files=self._files) if embedded else None
        self._applied: RouterState | None = None
        self._answered: bool | None = None

    async def __aenter__(self) -> _RouterKeeper:
        await self.keep()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._router is not None:
            await self._router.stop()

    async def keep(self) -> None:
        """Reconcile; a failure (HAProxy refusing to start, say) is retried at the next poll.
        Then certificates saved but not taken by HAProxy are given to it again."""
        try:
            await self.reconcile()
        except RouterFailed as exc:
            log.warning("router: %s; trying again", exc.message)
        await push_certificates(self._svc)

    async def reconcile(self) -> None:
        if self._router is None:
            await self._reconcile_external()
            return
        # Docker listed before the lock: a swap waits for the lock, not for this listing
        listed = await web_nodes(self._svc)
        async with locked(self._files):
            if self._router.master_pid is None:
                if self._applied is None:  # the first start: nothing stopped
                    log.info("router: HAProxy on %s", self._svc.settings.router_bind)
                else:
                    log.warning("HAProxy stopped: starting it again with every route")
                await self._start(self._router)
                return
            nodes = await latest_nodes(self._svc, files=self._files, nodes=listed)
            state = await router_state(self._svc, nodes=nodes)
            if state != self._applied:
                stamp_listing(self._files, nodes)
                config, tls = await self._config(state)
                crt_list = tls.crt_list if tls else None
                await self._router.apply(config=config, hosts=state.hosts, crt_list=crt_list)
                self._applied = state

    async def _start(self, router: EmbeddedHAProxy) -> None:
        state = await router_state(self._svc)
        config, tls = await self._config(state)
        crt_list = tls.crt_list if tls else None
        await router.start(config=config, hosts=state.hosts, crt_list=crt_list)
        self._applied = state

    async def _reconcile_external(self) -> None:
        bind = self._svc.settings.router_bind
        answered = await apply_routes(self._svc, files=self._files, bind=bind)
        if answered != self._answered:
            if answered:
                log.info("router: the external HAProxy answers; it serves every route")
            else:
                log.warning(
                    "router: no HAProxy answers at %s; the files in %s are kept up to date",
                    self._files.master, self._files.directory,
                )  # fmt: skip
            self._answered = answered

    async def _config(self, state: RouterState) -> tuple[str, TLS | None]:
        """This process runs the router: its settings say how it listens (HTTPS too)."""
        bind = self._svc.settings.router_bind
        return await router_config(self._svc, files=self._files, state=state, bind=bind)


async def _orphaned_queued(svc: Services) -> list[Job]:
    """Queued jobs whose submitter is gone (one still waiting for a slot keeps its lease)."""
    query = select(Job).where(
        Job.state == JobState.QUEUED, Job.created_at < utcnow() - ORPHANED_AFTER
    )
    async with svc.sessions() as session:
        queued = (await session.scalars(query.order_by(Job.created_at))).all()
    now = utcnow()
    return [j for j in queued if worker_is_gone(j.claimed_by, lease_until=j.lease_until, now=now)]


async def _expire_keys(svc: Services) -> None:
    """Forget Slack deliveries older than KEYS_KEPT: the table must not grow for ever."""
    async with svc.sessions() as session, session.begin():
        removed = await repo.expire_idempotency_keys(session, before=utcnow() - KEYS_KEPT)
    if removed:
        log.info("forgot %d idempotency key(s) older than %s", removed, KEYS_KEPT)

"""Clones asleep when idle: stopped after ``CLONEBOT_SLEEP_AFTER`` without a request through
the router, started again by the next request to one of their domains.

Requests are read from HAProxy's counters (``show stat``, one command for every backend) by
``serve`` every round; only a clone found idle costs a look at the database. The counters
start again at 0 with every HAProxy reload or restart, so what was seen last, and when it
last changed, is kept in ``serve``'s memory per environment: a restart of ``serve`` starts
every clone's clock again. A clone's domains, while it sleeps for idleness, are answered by a
"waking up" page (``services.sleep.stopped_page``, backend ``wake_<name>``); a request
reaching it starts the clone, and the router sends the next one to its nodes again.

Never put to sleep: a source, a clone that serves a custom domain or takes part in a route
(a failover backup gets no requests and must stay up), one a job works on, one without a web
layer (no request could wake it). Stops and starts are jobs asked in the owner's name,
checked again as they run like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from services.access import Request
from services.context import Services
from services.errors import ClonebotError
from services.job_locks import holds, unfinished_jobs
from services.jobs import run_job, serving_reason, submit_start, submit_stop
from services.sleep import Stopped
from services.traffic.haproxy import BackendCount, Counters, RouterFailed, RuntimeAPI
from services.traffic.router import ENV_PREFIX, WAKE_PREFIX, env_backend, router_state
from storage import repositories as repo
from storage.models import EnvironmentRecord, JobState

log = logging.getLogger(__name__)

# a clone found serving traffic, or busy, is looked at again after this (or after
# CLONEBOT_SLEEP_AFTER, when shorter), not at every round
LOOK_AGAIN = timedelta(minutes=1)
# a clone woken keeps its waking page until a web node accepts connections, at most this long
READY_WITHIN = timedelta(seconds=30)


@dataclass(frozen=True)
class SleepNotice:
    """What the owner and the team may be told; the front door words it."""

    kind: Literal["slept", "woke"]
    environment: str
    owner: str
    idle_for: timedelta | None = None  # slept: how long it had no request (as far as seen)
    channel: str | None = None  # the clone's own notify channel, if it has one


SleepSink = Callable[[SleepNotice], Awaitable[None]]


async def ignore_notices(notice: SleepNotice) -> None:
    """The log says it already."""


@dataclass(frozen=True)
class _Seen(BackendCount):
    fresh: bool = False  # counted by another worker than the last look's: from 0 again

    def came(self, before: int) -> bool:
        """Whether requests came since the last look, which read ``before``."""
        return self.requests > (0 if self.fresh else before)


def _since_last(counters: Counters, *, worker: str | None) -> dict[str, _Seen]:
    fresh = counters.worker != worker  # a reload or a restart of HAProxy since
    return {b: _Seen(c.requests, c.up, fresh) for b, c in counters.backends.items()}


@dataclass
class _Clock:
    requests: int  # the backend's counter when last read
    since: float  # monotonic: when it last changed, or was first seen


class IdleWatch:
    """Each environment's requests as HAProxy counts them; idle clones stopped, requests to
    sleeping ones answered by starting them."""

    def __init__(
        self,
        svc: Services,
        *,
        api: RuntimeAPI,
        notify: SleepSink = ignore_notices,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._svc, self._api, self._notify, self._clock = svc, api, notify, clock
        self._clocks: dict[str, _Clock] = {}  # running environments, by name
        self._knocks: dict[str, int] = {}  # requests seen at each sleeping clone's page
        self._worker: str | None = None  # the HAProxy worker that counted them
        # clones being woken: the router must keep their waking page until one listens
        self.waking: set[str] = set()

    async def check(self) -> None:
        """One look at the counters: wake clones asked for, then put idle ones to sleep. A
        failure is logged; the next round tries again."""
        try:
            counters = await self._api.backend_requests()
        except RouterFailed as exc:  # HAProxy (re)starting: its counters come back with it
            log.debug("sleep: no counters (%s)", exc.message)
            return
        counts = _since_last(counters, worker=self._worker)
        self._worker = counters.worker
        after = self._svc.settings.sleep_after
        # every clock moved as the counters were read: a wake may take seconds
        idle = self._idle(counts, after=after)
        knocked = self._knocked(counts)
        for name in knocked:
            await self._guarded(self._wake(name), name=name, doing="waking")
        if knocked:  # the others' requests meanwhile are seen next round, before any sleeps
            return
        for name, idle_s in idle:
            assert after is not None
            await self._guarded(
                self._sleep(name, idle_s=idle_s, after=after), name=name, doing="putting to sleep"
            )

    def _knocked(self, counts: dict[str, _Seen]) -> list[str]:
        """Sleeping clones whose page got a request since the last look."""
        pages = {
            b.removeprefix(WAKE_PREFIX): c for b, c in counts.items() if b.startswith(WAKE_PREFIX)
        }
        knocked = [n for n, c in pages.items() if c.came(self._knocks.get(n, 0))]
        self._knocks = {n: c.requests for n, c in pages.items()}
        return knocked

    def _idle(
        self, counts: dict[str, _Seen], *, after: timedelta | None
    ) -> list[tuple[str, float]]:
        """Move each running environment's clock; those idle ``after`` long, with how long."""
        now = self._clock()
        running = {
            b.removeprefix(ENV_PREFIX): c
            for b, c in counts.items()
            if b.startswith(ENV_PREFIX) and c.up
        }
        # one stopped (or gone) starts a new clock when it runs again
        self._clocks = {n: c for n, c in self._clocks.items() if n in running}
        for name, seen in running.items():
            clock = self._clocks.setdefault(name, _Clock(seen.requests, now))
            if seen.came(clock.requests):
                clock.since = now
            clock.requests = seen.requests
        if after is None:
            return []
        limit = after.total_seconds()
        return [(n, now - c.since) for n, c in self._clocks.items() if now - c.since >= limit]

    async def _guarded(self, work: Awaitable[None], *, name: str, doing: str) -> None:
        try:
            await work
        except ClonebotError as exc:  # a refusal, a failed job: recorded on it; next time
            log.warning("sleep: %s %s failed: %s; trying again later", doing, name, exc.message)

    async def _sleep(self, name: str, *, idle_s: float, after: timedelta) -> None:
        record, kept = await self._candidate(name)
        if record is None or record.owner is None:  # a source, say: not again before long
            self._look_again(name, after=after, in_s=after.total_seconds())
            return
        self._look_again(name, after=after, in_s=min(after, LOOK_AGAIN).total_seconds())
        if kept:
            log.info("sleep: %s had no request for %s but stays up: %s", name, after, kept)
            return
        job = await submit_stop(self._svc, Request(record.owner), name=name, why=Stopped.IDLE)
        if (await run_job(self._svc, job.id)).state != JobState.SUCCEEDED:
            return
        idle = timedelta(seconds=round(idle_s))
        log.info("sleep: %s is asleep: no request for %s; a request wakes it", name, idle)
        self._clocks.pop(name, None)
        notice = SleepNotice("slept", name, record.owner, idle, record.notify_channel)
        await self._notify(notice)

    async def _candidate(self, name: str) -> tuple[EnvironmentRecord | None, str]:
        """The record of a running clone of clonebot's, or None; and why it must stay up
        now, if it must."""
        async with self._svc.sessions() as session:
            record = await repo.get_environment(session, name)
            if record is None or record.cloned_from is None or record.stopped is not None:
                return None, ""
            if record.state != "ready" or record.owner is None:  # jobs ask in its owner's name
                return None, ""
            if serving := await serving_reason(session, name, doing="stopping"):
                return record, serving
            for job in await unfinished_jobs(session):
                if any(hold.environment == name for hold in holds(job)):
                    return record, f"job {job.id} ({job.kind}) works on it"
        return record, ""

    def _look_again(self, name: str, *, after: timedelta, in_s: float) -> None:
        """Seen as idle again ``in_s`` from now, unless a request comes meanwhile."""
        if (clock := self._clocks.get(name)) is not None:
            clock.since = self._clock() - after.total_seconds() + in_s

    async def _wake(self, name: str) -> None:
        async with self._svc.sessions() as session:
            record = await repo.get_environment(session, name)
        # only one asleep for idleness: one stopped by its owner or its expiry stays stopped
        if record is None or record.stopped != Stopped.IDLE or record.owner is None:
            return
        log.info("sleep: a request came for %s: waking it", name)
        started = self._clock()
        self.waking.add(name)
        try:
            job = await submit_start(self._svc, Request(record.owner), name=name)
            if (await run_job(self._svc, job.id)).state != JobState.SUCCEEDED:
                return
            await self._until_served(name)
        finally:
            self.waking.discard(name)
        log.info("sleep: %s is awake, in %.1f s", name, self._clock() - started)
        await self._notify(SleepNotice("woke", name, record.owner, None, record.notify_channel))

    async def _until_served(self, name: str) -> None:
        """Until a web node of a clone just started accepts connections, at most READY_WITHIN.

        The router is brought to the routes only after this round, so meanwhile a visitor
        still gets the page that reloads itself, never HAProxy's bare 503 of a node that
        does not listen yet."""
        state = await router_state(self._svc)
        servers = next((b.servers for b in state.backends if b.name == env_backend(name)), ())
        running = [s for s in servers if s.running]
        deadline = self._clock() + READY_WITHIN.total_seconds()
        while running and self._clock() < deadline:
            if any([await _accepts(s.address, s.port) for s in running]):
                return
            await asyncio.sleep(0.1)
        if running:
            log.warning("sleep: %s started, but no web node listens after %s", name, READY_WITHIN)


async def _accepts(address: str, port: int) -> bool:
    try:
        async with asyncio.timeout(1):
            _, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True

"""Prometheus metrics: what clonebot did (histograms, counters) and what it holds (gauges).

Everything is in ``REGISTRY``, not prometheus_client's global one, so that a test reads
exactly clonebot's series. Label values come from fixed sets only (job kinds, outcomes, Slack
method names, ...): never an environment's name, a user or a job id, which would make a new
series for each one. A value outside its set is counted as ``other``.

The process's own (``process_*``: CPU, memory, file descriptors) are there too. The gauges
are read when ``/metrics`` is scraped (``scrape``): jobs by state and environments by state
from the database, and whether HAProxy's master answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from services.context import Services
from services.job_locks import JobKind
from storage.models import EnvironmentRecord, Job, JobState

log = logging.getLogger(__name__)
T = TypeVar("T")
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_*: CPU seconds, memory, open files, start time
OTHER = "other"
JOB_KINDS = frozenset(JobKind)
JOB_OUTCOMES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.ROLLED_BACK})
ROUTE_CHANGES = frozenset({"reload", "runtime"})
SLACK_REQUESTS = frozenset({"command", "action", "view", "event", "other", "refused"})
_HTTP_STATUSES = frozenset(str(status) for status in range(100, 600))
SLACK_API_ERRORS = frozenset({"ratelimited", "server_error", "client_error", "connection", "api"})
STATE_READ_S = 2.0  # a scrape waits at most this long for the database and HAProxy

_MIB = 1024 * 1024
JOB_SECONDS = Histogram(
    "clonebot_job_duration_seconds",
    "Jobs from their claim to their end, by kind and outcome.",
    ["kind", "outcome"],
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
FREEZE_SECONDS = Histogram(
    "clonebot_freeze_seconds",
    "How long each source container was paused or stopped for a clone's final copy.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
COPY_BYTES = Counter(
    "clonebot_copy_bytes", "Bytes copied into clones' volumes by full copies.", registry=REGISTRY
)
COPY_SECONDS = Histogram(
    "clonebot_copy_seconds",
    "Full copies of volumes (a pre-copy or a replica), each in seconds.",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)
COPY_THROUGHPUT = Histogram(
    "clonebot_copy_bytes_per_second",
    "Throughput of each full copy of volumes.",
    buckets=tuple(n * _MIB for n in (0.1, 1, 10, 50, 100, 250, 500, 1000, 2000)),
    registry=REGISTRY,
)
ROUTE_CHANGE_SECONDS = Histogram(
    "clonebot_route_change_seconds",
    "Routes brought to HAProxy: a seamless reload, or a change through its runtime API.",
    ["how"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
SLACK_API_SECONDS = Histogram(
    "clonebot_slack_api_seconds",
    "Slack Web API calls, retries included, by method.",
    ["method"],
    registry=REGISTRY,
)
SLACK_API_ERROR_COUNT = Counter(
    "clonebot_slack_api_errors",
    "Slack Web API attempts that failed: ratelimited (429), server_error (5xx), client_error "
    "(other 4xx), connection, or api (answered ok: false).",
    ["method", "reason"],
    registry=REGISTRY,
)
SLACK_ACK_SECONDS = Histogram(
    "clonebot_slack_ack_seconds",
    "Time to answer Slack's HTTP requests (Slack waits 3 s), by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5),
    registry=REGISTRY,
)
SLACK_REQUEST_COUNT = Counter(
    "clonebot_slack_requests",
    "Slack's HTTP requests answered, by HTTP status.",
    ["status"],
    registry=REGISTRY,
)


def bounded(value: str, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed``, else ``other``: a label never grows a new series."""
    return value if value in allowed else OTHER


def observe_job(*, kind: str, outcome: str, seconds: float) -> None:
    labels = (bounded(kind, JOB_KINDS), bounded(outcome, JOB_OUTCOMES))
    JOB_SECONDS.labels(*labels).observe(seconds)


def observe_slack_request(*, kind: str, status: int, seconds: float) -> None:
    """A request Slack sent over HTTP, answered with ``status`` after ``seconds``."""
    SLACK_ACK_SECONDS.labels(bounded(kind, SLACK_REQUESTS)).observe(seconds)
    SLACK_REQUEST_COUNT.labels(bounded(str(status), _HTTP_STATUSES)).inc()


def observe_route_change(*, how: str, seconds: float) -> None:
    ROUTE_CHANGE_SECONDS.labels(bounded(how, ROUTE_CHANGES)).observe(seconds)


class CopyMeter:
    """Passes a copy's progress (bytes so far) on, and counts the copy once it is done."""

    def __init__(self, on_bytes: Callable[[int], None]) -> None:
        self._on_bytes = on_bytes
        self._started = time.monotonic()
        self.copied = 0

    def __call__(self, copied: int) -> None:
        self.copied = copied
        self._on_bytes(copied)

    def done(self) -> None:
        seconds = time.monotonic() - self._started
        COPY_BYTES.inc(self.copied)
        COPY_SECONDS.observe(seconds)
        if seconds > 0:
            COPY_THROUGHPUT.observe(self.copied / seconds)


@dataclass
class State:
    """What clonebot holds, as read for one scrape; None where it could not be read."""

    jobs: dict[str, int] | None = None
    environments: dict[str, int] | None = None
    router_up: bool | None = None


class _StateCollector:
    """Yields the gauges of ``state``, set by ``scrape`` for the one call it makes."""

    def __init__(self) -> None:
        self.state: State | None = None

    def collect(self) -> Iterator[Metric]:
        state = self.state
        if state is None:
            return
        if state.jobs is not None:
            yield _by_state("clonebot_jobs", "Jobs by state, in the database.", state.jobs)
        if state.environments is not None:
            yield _by_state(
                "clonebot_environments",
                "Environments recorded, by state (creating: a clone job holds the name).",
                state.environments,
            )
        if state.router_up is not None:
            yield GaugeMetricFamily(
                "clonebot_router_up",
                "1 when HAProxy's master answers on the router folder's socket.",
                value=int(state.router_up),
            )


def _by_state(name: str, documentation: str, counts: dict[str, int]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["state"])
    for state, n in sorted(counts.items()):
        gauge.add_metric([state], n)
    return gauge


_STATE = _StateCollector()
REGISTRY.register(_STATE)


async def scrape(svc: Services) -> bytes:
    """The Prometheus text of every metric, the gauges read now."""
    state = await read_state(svc)
    # no await between these: another scrape cannot see this one's state
    _STATE.state = state
    try:
        return generate_latest(REGISTRY)
    finally:
        _STATE.state = None


async def read_state(svc: Services) -> State:
    """The gauges' values; what cannot be read in STATE_READ_S is left out (and logged)."""
    counts, router_up = await asyncio.gather(
        _bounded_time("database", _counts(svc)), _bounded_time("router", _router_up(svc))
    )
    jobs, environments = counts if counts is not None else (None, None)
    return State(jobs=jobs, environments=environments, router_up=router_up)


async def _bounded_time(what: str, read: Awaitable[T]) -> T | None:
    try:
        async with asyncio.timeout(STATE_READ_S):
            return await read
    except Exception as exc:  # a scrape answers with what it has
        log.warning("metrics: %s not read: %s", what, type(exc).__name__)
        return None


async def _counts(svc: Services) -> tuple[dict[str, int], dict[str, int]]:
    async with svc.sessions() as session:
        jobs = await session.execute(select(Job.state, func.count()).group_by(Job.state))
        envs = await session.execute(
            select(EnvironmentRecord.state, func.count()).group_by(EnvironmentRecord.state)
        )
        return {s: n for s, n in jobs.all()}, {s: n for s, n in envs.all()}


async def _router_up(svc: Services) -> bool:
    # services.traffic.haproxy reports its route changes here: imported when first scraped
    from services.traffic.haproxy import MasterCLI, RouterFiles

    assert svc.settings.router_dir is not None
    return await MasterCLI(RouterFiles(svc.settings.router_dir).master).alive()

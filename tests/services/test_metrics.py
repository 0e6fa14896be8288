"""Metrics as Prometheus reads them from ``/metrics``, and the log lines of a job."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.health import serving_health
from bot.logs import log_handler
from services import metrics
from services.access import Request
from services.context import Services
from services.jobs import run_job, submit_clone
from tests.conftest import OWNER, MakeSource, _free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
MIB = 1024 * 1024


def _samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _scrape(svc: Services) -> tuple[int, str, str]:
    """GET /metrics of clonebot with Slack off (``serving_health``)."""
    port = _free_port()
    settings = svc.settings.model_copy(update={"port": port, "http_host": "127.0.0.1"})
    async with (
        serving_health(dataclasses.replace(svc, settings=settings)),
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        return resp.status, resp.headers["Content-Type"], await resp.text()


@contextmanager
def _json_lines() -> Iterator[io.StringIO]:
    """Every INFO line logged in the block, as ``CLONEBOT_LOG_FORMAT=json`` writes it."""
    stream = io.StringIO()
    handler = log_handler("json", stream)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.docker
async def test_a_clone_job_is_measured_and_its_lines_name_it(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, seed_kib=1024)
    name = f"{source.name}-m"
    status, _, text = await _scrape(svc)
    assert status == 200
    before = _samples(text)

    job = await submit_clone(svc, Request(OWNER, channel="CTEAM"), source=source.name, name=name)
    with _json_lines() as lines:
        done = await run_job(svc, job.id)
        logging.getLogger("tests").info("after the job")
    assert done.state == "succeeded"

    status, content_type, text = await _scrape(svc)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    after = _samples(text)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    ended = {"kind": "clone", "outcome": "succeeded"}
    assert grew("clonebot_job_duration_seconds_count", **ended) == 1
    assert 0 < grew("clonebot_job_duration_seconds_sum", **ended) < 300
    # one stateful source container, frozen once: the job's freeze_ms
    assert grew("clonebot_freeze_seconds_count") == 1
    assert grew("clonebot_freeze_seconds_sum") == pytest.approx(done.freeze_ms / 1000)
    # the db's 1 MiB seed (and its small files) copied by the pre-copy
    assert MIB <= grew("clonebot_copy_bytes_total") < 4 * MIB
    assert grew("clonebot_copy_seconds_count") >= 1
    assert grew("clonebot_copy_bytes_per_second_count") >= 1
    # what the database holds now, read at the scrape
    assert _value(after, "clonebot_jobs", state="succeeded") == 1
    # the source (recorded when the clone was asked for) and its clone
    assert _value(after, "clonebot_environments", state="ready") == 2
    assert ("clonebot_router_up", frozenset()) in after  # no HAProxy in this test: 0
    assert _value(after, "clonebot_router_up") == 0
    assert _value(after, "process_resident_memory_bytes") > 0

    # bounded labels: no name, user or job id ever becomes a series
    values = {value for (_, labels) in after for _, value in labels}
    assert not values & {source.name, name, job.id, OWNER}, values
    # (other tests in this process may have counted Slack requests, or an unknown kind as other)
    kinds = _labels(after, "kind", metric="clonebot_job_duration_seconds")
    assert kinds <= metrics.JOB_KINDS | {metrics.OTHER}, kinds

    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    [end] = [r for r in records if r["logger"] == "services.jobs"]
    assert end["message"].startswith(f"clone of {name} succeeded in ")
    assert (end["level"], end["job_id"], end["request_id"]) == ("INFO", job.id, None)
    [after_job] = [r for r in records if r["logger"] == "tests"]
    assert after_job["job_id"] is None


def _labels(samples: Samples, label: str, *, metric: str) -> set[str]:
    """The values ``label`` takes in the series of ``metric``."""
    return {
        value
        for (name, labels) in samples
        if name.startswith(metric)
        for key, value in labels
        if key == label
    }


def test_a_label_outside_its_set_is_counted_as_other() -> None:
    before = metrics.REGISTRY.get_sample_value(
        "clonebot_job_duration_seconds_count", {"kind": "other", "outcome": "other"}
    )
    metrics.observe_job(kind="prod-shop", outcome="exploded", seconds=1.0)
    after = metrics.REGISTRY.get_sample_value(
        "clonebot_job_duration_seconds_count", {"kind": "other", "outcome": "other"}
    )
    assert after == (before or 0) + 1
    assert (
        metrics.REGISTRY.get_sample_value(
            "clonebot_job_duration_seconds_count", {"kind": "prod-shop", "outcome": "exploded"}
        )
        is None
    )

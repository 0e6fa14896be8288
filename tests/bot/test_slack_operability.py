"""What an operator of `clonebot serve` with Slack on reads: ``/metrics`` and JSON log lines."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.docker import DockerClient
from services.settings import Settings
from tests.conftest import OWNER, MakeSource, exec_output
from tests.serving import Serving, cli, until_page
from tests.slack.emulator import SlackEmulator

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def _scrape(port: int) -> Samples:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        return _samples(await resp.text())


def _samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _json_lines(log: Path) -> list[dict[str, Any]]:
    """The log's JSON lines (the console's own lines, such as "clonebot serving", are not)."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.mark.docker
@pytest.mark.slow
async def test_slack_on_metrics_count_requests_calls_jobs_and_routes_and_logs_are_json(
    routed: Settings,
    slack: SlackEmulator,
    make_source: MakeSource,
    docker: DockerClient,
    tmp_path: Path,
) -> None:
    prod = (await make_source(web_nodes=1)).name
    copy = f"{prod}-ops"
    cli(routed, "domain", "add", prod, "shop.test", "--as", OWNER)
    slack.fail("chat.postMessage", 429)  # the job's first message: rate-limited once, retried
    async with Serving(routed, slack, tmp_path, CLONEBOT_LOG_FORMAT="json") as bot:
        reply = await bot.command(OWNER, "/clone", f"{prod} {copy}")
        assert reply.status == 200
        final = await bot.final_message()
        assert final["text"].startswith(f":white_check_mark: *{copy}*")
        await exec_output(docker, f"{copy}-web-1", "echo copy > /www/index.html")
        before_swap = await _scrape(bot.port)
        await bot.command(OWNER, "/env", f"swap {prod} {copy}")
        await until_page(routed, "shop.test", "copy", within_s=5)
        seen = await _scrape(bot.port)

    def value(name: str, **labels: str) -> float:
        return seen.get((name, frozenset(labels.items())), 0.0)

    def route_changes(samples: Samples) -> float:
        return sum(v for (n, _), v in samples.items() if n == "clonebot_route_change_seconds_count")

    # two slash commands, acknowledged; nothing else came over HTTP
    assert value("clonebot_slack_ack_seconds_count", kind="command") == 2
    assert 0 < value("clonebot_slack_ack_seconds_sum", kind="command") < 6
    assert value("clonebot_slack_requests_total", status="200") == 2
    # the Web API calls, timed by method; the 429 counted though the retry hid it
    assert value("clonebot_slack_api_seconds_count", method="chat.postMessage") >= 2
    assert value("clonebot_slack_api_seconds_count", method="chat.update") >= 1
    assert (
        value("clonebot_slack_api_errors_total", method="chat.postMessage", reason="ratelimited")
        == 1
    )
    assert value("clonebot_job_duration_seconds_count", kind="clone", outcome="succeeded") == 1
    assert value("clonebot_freeze_seconds_count") == 1
    # the swap moved traffic through HAProxy (a reload or the runtime API); HAProxy runs
    assert route_changes(seen) >= route_changes(before_swap) + 1
    assert value("clonebot_router_up") == 1
    assert value("clonebot_jobs", state="succeeded") == 1
    labels = {v for (_, ls) in seen for _, v in ls}
    assert not labels & {prod, copy, OWNER, "shop.test"}, labels

    lines = _json_lines(bot.log)
    assert lines, bot.log.read_text()
    fields = {"time", "level", "logger", "message", "job_id", "request_id"}
    assert all(fields <= set(line) for line in lines)
    [end] = [x for x in lines if x["message"].startswith(f"clone of {copy} succeeded")]
    assert re.fullmatch(r"[0-9a-f]{12}", end["job_id"]), end
    # the job was started by the slash command: its lines carry that request's id
    assert re.fullmatch(r"[0-9a-f]{16}", end["request_id"] or ""), end

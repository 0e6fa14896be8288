"""The bot's Web API client measures every call and every failed attempt (Slack emulated)."""

from __future__ import annotations

import asyncio

import pytest
from slack_sdk.errors import SlackApiError

from bot.slack.client import MeasuredWebClient
from bot.slack.retries import retry_handlers
from services.metrics import REGISTRY
from tests.conftest import _free_port
from tests.slack.emulator import SlackEmulator
from tests.slack.signing import CHANNEL_ID


def _errors(method: str, reason: str) -> float:
    labels = {"method": method, "reason": reason}
    return REGISTRY.get_sample_value("clonebot_slack_api_errors_total", labels) or 0.0


def _calls(method: str) -> float:
    labels = {"method": method}
    return REGISTRY.get_sample_value("clonebot_slack_api_seconds_count", labels) or 0.0


async def test_each_failed_attempt_is_counted_by_reason_and_each_call_timed(
    slack: SlackEmulator,
) -> None:
    client = MeasuredWebClient(
        token=slack.bot_token, base_url=slack.api_url, retry_handlers=retry_handlers()
    )
    before = {r: _errors("chat.postMessage", r) for r in ("ratelimited", "server_error", "api")}
    calls = _calls("chat.postMessage")
    slack.fail("chat.postMessage", 503, 429, retry_after=0)

    posted = await client.chat_postMessage(channel=CHANNEL_ID, text="hello")

    assert posted["ok"]  # retried past both
    assert _calls("chat.postMessage") == calls + 1  # one call, its retries inside its time
    assert _errors("chat.postMessage", "server_error") == before["server_error"] + 1
    assert _errors("chat.postMessage", "ratelimited") == before["ratelimited"] + 1
    assert _errors("chat.postMessage", "api") == before["api"]

    with pytest.raises(SlackApiError):
        await client.chat_update(channel=CHANNEL_ID, ts="1.000001", text="no such message")
    assert _errors("chat.update", "api") >= 1


async def test_a_method_outside_the_fixed_set_and_a_dead_slack_are_labelled_boundedly() -> None:
    dead = f"http://127.0.0.1:{_free_port()}/api/"  # nothing listens there
    client = MeasuredWebClient(token="xoxb-test", base_url=dead, retry_handlers=[])
    before = _errors("other", "connection"), _calls("other")

    with pytest.raises(OSError):  # aiohttp's ClientConnectorError
        await client.api_call("admin.users.list")

    assert (_errors("other", "connection"), _calls("other")) == (before[0] + 1, before[1] + 1)
    assert (
        REGISTRY.get_sample_value(
            "clonebot_slack_api_seconds_count", {"method": "admin.users.list"}
        )
        is None
    )


async def test_a_retry_after_longer_than_half_a_minute_fails_the_call_at_once(
    slack: SlackEmulator,
) -> None:
    """Not held for an hour: the caller hears Slack's 429 now and deals with it."""
    client = MeasuredWebClient(
        token=slack.bot_token, base_url=slack.api_url, retry_handlers=retry_handlers()
    )
    slack.fail("chat.postMessage", 429, retry_after=3600)

    with pytest.raises(SlackApiError) as failed:
        async with asyncio.timeout(10):
            await client.chat_postMessage(channel=CHANNEL_ID, text="hello")

    assert failed.value.response.status_code == 429
    assert slack.faults_left("chat.postMessage") == 0
    assert (await client.chat_postMessage(channel=CHANNEL_ID, text="again"))["ok"]

"""Slack answering 429 and 500 while a clone started from Slack runs: the bot retries with
back-off, honours Retry-After, loses no message, and the job does not notice."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest

from services.settings import Settings
from tests.conftest import OWNER, MakeSource
from tests.serving import TEAM_CHANNEL, Serving, cli, texts, until
from tests.slack.emulator import Call, SlackEmulator
from tests.slack.signing import CHANNEL_ID

pytestmark = [pytest.mark.docker, pytest.mark.slow]
RETRY_AFTER = 2


def _after_a_429(calls: list[Call]) -> list[float]:
    """For each call answered 429, how long after it the same method was called again."""
    return [
        later.at - call.at
        for call, later in pairwise(calls)
        if call.answer.get("error") == "ratelimited"
    ]


async def test_a_clone_from_slack_survives_slack_answering_429_and_500(
    routed: Settings,
    slack: SlackEmulator,
    make_source: MakeSource,
    tmp_path: Path,
) -> None:
    prod = (await make_source(web_nodes=1)).name
    copy = f"{prod}-flaky"
    # the progress message meets a rate limit, then Slack's servers failing twice; every
    # edit after it meets the same, then two more 500s: four in a row, one more than a call
    # is retried, so the editor must try the next edit rather than give the message up
    slack.fail("chat.postMessage", 429, 500, 500, retry_after=RETRY_AFTER)
    slack.fail("chat.update", 429, 500, 500, 500, 500, retry_after=RETRY_AFTER)

    async with (
        asyncio.timeout(180),
        Serving(routed, slack, tmp_path) as bot,
    ):
        began = time.monotonic()
        reply = await bot.command(OWNER, "/clone", f"{prod} {copy}")
        assert reply.status == 200 and reply.elapsed_s < 3, reply

        final = await bot.final_message(timeout_s=90)
        print(f"\nthe clone's result shown {time.monotonic() - began:.1f} s after the command")
        assert final["text"].startswith(f":white_check_mark: *{copy}* is running at"), final
        buttons = [
            e["action_id"] for b in final["blocks"] if b["type"] == "actions" for e in b["elements"]
        ]
        assert {"swap_domains", "split_traffic", "delete_clone"} <= set(buttons), buttons
        # one message in the channel, the one the clone's progress went to: no retry posted
        # a second, and none fell back to a direct message
        progress = texts(slack, "chat.postMessage", CHANNEL_ID)
        assert len(progress) == 1 and progress[0].startswith(f"Cloning {prod} → {copy}")
        [posted] = [c for c in slack.calls_to("chat.postMessage") if c.answer.get("ok")][:1]
        assert posted.params["channel"] == CHANNEL_ID
        assert final["ts"] == posted.answer["ts"]
        await until(
            lambda: len(texts(slack, "chat.postMessage", TEAM_CHANNEL)) >= 2,
            what="the clone's start and end told to the team",
            timeout_s=30,
        )
        team = texts(slack, "chat.postMessage", TEAM_CHANNEL)
        assert team[0].startswith(f":hourglass_flowing_sand: Cloning {prod} → {copy}")
        assert team[1].startswith(f":white_check_mark: *{copy}* is running")

    # every failure asked for was met, and each 429's Retry-After was waited out, by the
    # client (postMessage) and by the progress editor (update) alike
    assert slack.faults_left("chat.postMessage") == slack.faults_left("chat.update") == 0
    for method in ("chat.postMessage", "chat.update"):
        waits = _after_a_429(slack.calls_to(method))
        assert waits and min(waits) >= RETRY_AFTER - 0.05, (method, waits)
    jobs = json.loads(cli(routed, "jobs", "--json"))
    assert [(j["environment"], j["state"]) for j in jobs] == [(copy, "succeeded")]


async def test_slack_failing_for_good_loses_the_edits_but_not_the_job_or_the_notice(
    routed: Settings,
    slack: SlackEmulator,
    make_source: MakeSource,
    tmp_path: Path,
) -> None:
    """Every edit of the message fails (an outage of chat.update): the bot gives the result
    up after a bounded time, and the job, the team's notice and the DM do not wait for it."""
    prod = (await make_source(web_nodes=1, db_nodes=0)).name
    copy = f"{prod}-down"
    slack.fail("chat.update", *[500] * 200)

    async with (
        asyncio.timeout(180),
        Serving(routed, slack, tmp_path) as bot,
    ):
        await bot.command(OWNER, "/clone", f"{prod} {copy}")
        posted = await slack.wait_for("chat.postMessage", lambda p: p["channel"] == CHANNEL_ID)
        await until(
            lambda: len(texts(slack, "chat.postMessage", TEAM_CHANNEL)) >= 2,
            what="the clone's end told to the team, Slack's edits failing",
            timeout_s=120,
        )
        told = time.monotonic()
        team = texts(slack, "chat.postMessage", TEAM_CHANNEL)
        assert team[1].startswith(f":white_check_mark: *{copy}* is running")
        await until(
            lambda: any(t.startswith(f":white_check_mark: *{copy}*") for t in _dms(slack)),
            what="the owner's direct message",
        )
        edits = slack.calls_to("chat.update")
        assert edits and not any(c.answer.get("ok") for c in edits)
        # the message still shows the progress it was posted with, as Slack kept it
        shown = slack.workspace.message(CHANNEL_ID, posted.answer["ts"])
        assert shown["text"] == posted.params["text"]

    jobs = json.loads(cli(routed, "jobs", "--json"))
    assert [(j["environment"], j["state"]) for j in jobs] == [(copy, "succeeded")]
    ended = datetime.fromisoformat(jobs[0]["finished_at"])
    waited = told - time.monotonic() + (datetime.now(UTC) - ended).total_seconds()
    print(f"\nthe team told {waited:.1f} s after the job ended, {len(edits)} edits refused")
    assert waited < 40, "the result's edit was given up within its bound"
    assert "its last edit failed" in bot.log.read_text()


def _dms(slack: SlackEmulator) -> list[str]:
    return [
        str(c.params.get("text", ""))
        for c in slack.calls_to("chat.postMessage")
        if c.params.get("channel") == OWNER and c.answer.get("ok")
    ]

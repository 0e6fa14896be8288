"""A burst of slash commands over HTTP: 200 within 10 s, each signed as Slack signs it, each
acknowledged within Slack's 3 s and then answered.

The burst is a team's morning rather than one command repeated: 40 people, five commands
each, in the mix a real Slack workspace sends: listing environments, asking about one,
reading the help, a mistyped subcommand, strangers trying to clone production (refused,
which is audited: a database write), the /clone form opened (views.open within the
trigger's 3 s), and the owner starting real clones, which run while the rest arrive.

The work after the ack runs on 4 workers; past CLONEBOT_SLACK_QUEUE (100) waiting, a user
is told at once that clonebot is busy (bot.slack.bot). On a quiet machine no one is; on
this shared 2-core one under other tests' load (load average 15) some of the last are, which
is the designed answer to overload, so the proof counts them rather than forbids them."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.playground.workspace import Params
from bot.slack.bot import BUSY
from services.settings import Settings
from tests.conftest import OWNER, MakeSource
from tests.serving import SECRET, Serving, texts
from tests.slack.emulator import SlackEmulator
from tests.slack.signing import CHANNEL_ID, slash_command

pytestmark = [pytest.mark.docker, pytest.mark.slow]
COMMANDS, WITHIN_S, ACK_S = 200, 10.0, 3.0
QUEUE = 100  # CLONEBOT_SLACK_QUEUE's default
_REFUSED = ":no_entry: Nothing was done"
PEOPLE = [OWNER, *(f"UTEAM{i:04d}" for i in range(1, 40))]


class _AnsweredSlack(SlackEmulator):
    """Slack that notes when (wall clock) each command's answer reached its response_url
    (``?n=``)."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: dict[int, tuple[float, str]] = {}

    async def _response(self, request: web.Request) -> web.Response:
        response = await super()._response(request)
        if "n" in request.query:
            self.answered[int(request.query["n"])] = (time.time(), self.responses[-1]["text"])
        return response


@dataclass(frozen=True)
class _Asked:
    user: str
    command: str
    text: str
    expect: tuple[str, ...]  # how the answer the user sees may start (none: a form, a job)


def _burst(prod: str) -> list[_Asked]:
    """The 200 commands, in the order they arrive."""
    kinds = [
        # (what they may see depends on what else runs on the engine)
        lambda u: _Asked(u, "/env", "list", ("*Environments you may see*", "You may see no")),
        lambda u: _Asked(u, "/env", "help", ("*/env* commands:",)),
        lambda u: _Asked(u, "/env", "frobnicate", ("`frobnicate` is not an /env command",)),
        lambda u: _Asked(u, "/clone", f"{prod} {prod}-{u.lower()}", (_REFUSED,)),
        lambda u: _Asked(u, "/clone", "", ()),
    ]
    asked = [kinds[i % len(kinds)](PEOPLE[1 + i % (len(PEOPLE) - 1)]) for i in range(COMMANDS)]
    for i in range(0, COMMANDS, 10):  # the owner asks about production, in turn
        asked[i] = _Asked(OWNER, "/env", f"info {prod}", (f"*{prod}* · owner <@{OWNER}>",))
    for i, n in ((31, 1), (81, 2)):  # and clones it twice, while the burst goes on
        asked[i] = _Asked(OWNER, "/clone", f"{prod} {prod}-m{n}", ())
    return asked


async def test_200_slash_commands_in_10_s_are_each_acknowledged_within_3_s(
    routed_db: Settings,
    make_source: MakeSource,
    tmp_path: Path,
) -> None:
    prod = (await make_source(web_nodes=1)).name
    asked = _burst(prod)
    slack = _AnsweredSlack()
    async with slack, Serving(routed_db, slack, tmp_path) as bot, asyncio.timeout(240):
        payloads = [
            slash_command(
                command=a.command, user_id=a.user, text=a.text,
                response_url=f"{slack.response_url}?n={n}",
            )
            for n, a in enumerate(asked)
        ]  # fmt: skip
        url = f"http://127.0.0.1:{bot.port}/slack/events"
        sent = await _burst_from_slack(url=url, commands=payloads)
        last_sent = sent[-1]["sent_at"] - sent[0]["sent_at"]
        acks = sorted(r["elapsed_s"] for r in sent)
        print(
            f"\n{COMMANDS} commands sent over {last_sent:.1f} s; ack latency median "
            f"{statistics.median(acks) * 1000:.0f} ms, p95 {acks[int(0.95 * COMMANDS)] * 1000:.0f}"
            f" ms, max {acks[-1] * 1000:.0f} ms"
        )
        print("clonebot's own ack times:", await _server_acks(bot.port))
        assert last_sent <= WITHIN_S + 0.5, "the burst was not sent within 10 s"
        # Slack shows an ack's body as a message: an empty 200 shows nothing, an error does
        bad = [
            (r["n"], r["status"], r["text"][:80])
            for r in sent
            if (r["status"], r["text"]) != (200, "")
        ]
        assert bad == [], bad
        assert acks[-1] < ACK_S, f"slowest ack {acks[-1]:.2f} s"

        # then every user sees the answer to their own command, or, once CLONEBOT_SLACK_QUEUE
        # commands wait for the 4 workers, is told at once that clonebot is busy
        answered = [n for n, a in enumerate(asked) if a.expect]
        await _until_answered(slack, answered, timeout_s=60)
        busy = [n for n in answered if slack.answered[n][1] == BUSY]
        wrong = [
            (n, asked[n].text, slack.answered[n][1][:80])
            for n in answered
            if n not in busy and not slack.answered[n][1].startswith(asked[n].expect)
        ]
        assert wrong == [], wrong
        queued = [n for n, a in enumerate(asked) if a.command == "/env" or a.text]
        assert not set(busy) & set(queued[:QUEUE]), "busy before the queue could be full"
        waits = sorted(slack.answered[n][0] - sent[n]["sent_at"] for n in answered if n not in busy)
        told = max((slack.answered[n][0] - sent[n]["sent_at"] for n in busy), default=0.0)
        print(
            f"{len(answered) - len(busy)} answered through response_url: median "
            f"{statistics.median(waits) * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms; "
            f"{len(busy)} told clonebot was busy (within {told * 1000:.0f} ms)"
        )
        # every form opened within the 3 s its trigger lasts (Slack refuses a later one)
        forms = {p["trigger_id"]: n for n, p in enumerate(payloads) if asked[n].command == "/clone"}
        forms = {t: n for t, n in forms.items() if not asked[n].text}
        opened = await _forms_opened(slack, set(forms), timeout_s=30)
        late = {forms[t]: round(at - sent[forms[t]]["sent_at"], 2) for t, at in opened.items()}
        print(f"{len(opened)} forms opened, the last {max(late.values()):.2f} s after its command")
        assert {n: s for n, s in late.items() if s >= ACK_S} == {}
        # and each then filled with what the user may clone (strangers: that they may not)
        ids = {
            c.answer["view"]["id"]: forms[str(c.params["trigger_id"])]
            for c in slack.calls_to("views.open")
            if c.answer.get("ok") and c.params.get("trigger_id") in forms
        }
        filled = await _filled(slack, set(ids), timeout_s=60)
        shown = [
            ("clone_modal" in str(v), "You may clone no environment" in str(v))
            for v in filled.values()
        ]
        assert all(form or none for form, none in shown), filled
        # the owner's two clones ran beside the burst and ended with their buttons
        for n in (1, 2):
            final = await slack.wait_for("chat.update", _done(f"{prod}-m{n}"), timeout_s=120)
            assert final.params["channel"] == CHANNEL_ID
        progress = texts(slack, "chat.postMessage", CHANNEL_ID)
        assert len(progress) == 2, progress


async def _until_answered(slack: _AnsweredSlack, numbers: list[int], *, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while missing := [n for n in numbers if n not in slack.answered]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{len(missing)} commands never answered: {missing[:10]}") from None


async def _server_acks(port: int) -> str:
    """How many of the slash commands clonebot itself answered within 0.1, 0.5, 1 and 3 s
    (its ``clonebot_slack_ack_seconds`` histogram): the time on its side of the wire."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    buckets = {
        float(le): float(value)
        for le, value in re.findall(
            r'clonebot_slack_ack_seconds_bucket\{kind="command",le="([0-9.]+)"\} ([0-9.e+]+)', text
        )
    }
    return ", ".join(f"{buckets.get(le, 0):.0f} within {le:g} s" for le in (0.1, 0.5, 1.0, 3.0))


async def _burst_from_slack(*, url: str, commands: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The burst sent by Slack's side in a process of its own (tests/proof/burst.py)."""
    job = {"url": url, "secret": SECRET, "within_s": WITHIN_S, "commands": commands}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.proof.burst",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate(json.dumps(job).encode())
    assert proc.returncode == 0, out
    return sorted((json.loads(line) for line in out.splitlines()), key=lambda r: r["n"])


def _done(clone: str) -> Callable[[Params], bool]:
    """Whether an edit shows ``clone`` made, with its buttons."""
    return lambda params: str(params.get("text")).startswith(f":white_check_mark: *{clone}*")


async def _forms_opened(
    slack: SlackEmulator, triggers: set[str], *, timeout_s: float
) -> dict[str, float]:
    """When (wall clock) views.open was accepted for each of the triggers."""
    offset = time.time() - time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                opened = {
                    str(c.params["trigger_id"]): c.at + offset
                    for c in slack.calls_to("views.open")
                    if c.answer.get("ok") and c.params.get("trigger_id") in triggers
                }
                if len(opened) == len(triggers):
                    return opened
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{len(triggers) - len(opened)} forms never opened") from None


async def _filled(slack: SlackEmulator, view_ids: set[str], *, timeout_s: float) -> dict[str, Any]:
    """The view each of the opened forms was filled with (its accepted views.update)."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                filled = {
                    str(c.params["view_id"]): c.params["view"]
                    for c in slack.calls_to("views.update")
                    if c.answer.get("ok") and c.params.get("view_id") in view_ids
                }
                if len(filled) == len(view_ids):
                    return filled
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{len(view_ids) - len(filled)} forms never filled") from None

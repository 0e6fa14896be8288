"""The Slack app's bounded work queue, through `clonebot serve`'s HTTP endpoint and the Slack
emulator: past CLONEBOT_SLACK_QUEUE waiting requests, the user is told at once that clonebot
is busy, and the requests already acknowledged are still answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from bot.slack.bot import BUSY, WORKERS
from services.settings import Settings
from tests.conftest import OWNER
from tests.serving import Serving, until
from tests.slack.emulator import SlackEmulator
from tests.slack.signing import command_request, slash_command

QUEUE = 2


class _HoldingSlack(SlackEmulator):
    """Slack whose response_url, when asked with ``?hold=1``, answers only once released: the
    bot's workers answering those requests are kept busy meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.held = 0
        self.release = asyncio.Event()

    async def _response(self, request: web.Request) -> web.Response:
        if request.query.get("hold"):
            self.held += 1
            await self.release.wait()
        return await super()._response(request)


async def test_past_the_queue_limit_a_request_is_answered_busy_at_once(
    routed: Settings,
    tmp_path: Path,
) -> None:
    slack = _HoldingSlack()
    async with (
        slack,
        Serving(routed, slack, tmp_path, CLONEBOT_SLACK_QUEUE=str(QUEUE)) as bot,
    ):
        held_url = f"{slack.response_url}?hold=1"

        async def env_help(response_url: str) -> None:
            payload = slash_command(
                command="/env", user_id=OWNER, text="help", response_url=response_url
            )
            reply = await bot.sender.send(command_request(payload))
            assert reply.status == 200

        try:
            # every worker answers a request whose answer Slack holds; QUEUE more wait
            for _ in range(WORKERS):
                await env_help(held_url)
            await until(lambda: slack.held == WORKERS, what="every worker busy")
            for _ in range(QUEUE):
                await env_help(held_url)

            # one more: told at once, while the others still wait
            await env_help(slack.response_url)
            busy = await slack.wait_for_response(lambda r: r["text"] == BUSY, timeout_s=10)
            assert busy["response_type"] == "ephemeral"
            assert slack.held == WORKERS and not slack.release.is_set()
        finally:
            slack.release.set()

        def helped() -> int:
            return sum("*/env* commands:" in r["text"] for r in slack.responses)

        # the requests acknowledged before are all answered; the queue takes requests again
        await until(lambda: helped() == WORKERS + QUEUE, what="the waiting ones", timeout_s=30)
        await env_help(slack.response_url)
        await until(lambda: helped() == WORKERS + QUEUE + 1, what="one after the burst")
        assert [r["text"] for r in slack.responses].count(BUSY) == 1

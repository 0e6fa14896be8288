"""The Slack app: Bolt's AsyncApp with clonebot's listeners, reached over HTTP or Socket Mode.

HTTP: ``POST /slack/events`` on PORT, every request's signature checked by Bolt (a forged or
stale one gets 401). Socket Mode when SLACK_APP_TOKEN is set: no public address needed. Either
way ``GET /healthz`` and ``GET /metrics`` answer on PORT.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import func, select

from bot.health import healthz
from bot.slack import actions, commands, home, submissions
from bot.slack.bot import SlackBot
from bot.slack.edge import MAX_BODY, CheckedSocketModeHandler, SlackEdge
from bot.slack.health import SlackCheck
from bot.slack.notices import Notices
from bot.slack.progress import JobMessages
from bot.slack.retries import retry_handlers
from services.context import Services
from storage.models import Job

if TYPE_CHECKING:
    from bot.playground.server import Playground

log = logging.getLogger(__name__)


def create_app(svc: Services) -> tuple[AsyncApp, SlackBot]:
    """The app with every listener registered, and what they share."""
    settings = svc.settings
    client = AsyncWebClient(
        token=settings.slack_bot_token,
        base_url=settings.slack_api_url,
        retry_handlers=retry_handlers(),
    )
    app = AsyncApp(
        client=client,
        signing_secret=settings.slack_signing_secret or "",
        # Over HTTP the edge (bot.slack.edge) verifies every request before Bolt sees it:
        # Bolt's own check logs the whole body of a request it refuses. Over Socket Mode
        # nothing is signed: the socket itself is authenticated.
        request_verification_enabled=False,
        logger=logging.getLogger("slack_bolt"),
    )
    notices = Notices(svc, client)
    bot = SlackBot(svc=svc, client=client, notices=notices, jobs=JobMessages(svc, client, notices))
    for listeners in (commands, actions, submissions, home):
        listeners.register(app, bot)
    bot.jobs.on_change = lambda user: home.publish_home(bot, user)

    @app.error
    async def failed(error: Exception, body: dict[str, Any]) -> None:
        log.error("Slack request %s failed: %r", body.get("type"), error, exc_info=error)

    return app, bot


@contextlib.asynccontextmanager
async def running_app(
    svc: Services, *, playground: Playground | None = None
) -> AsyncIterator[SlackBot]:
    """The app serving Slack until the block ends; then its jobs are stopped (rolled back).

    With ``playground`` the app is served with the playground's routes beside its own, and
    the playground plays Slack (``bot.playground.serving`` makes the settings it needs):
    ``/healthz`` then says Slack is off, as it is."""
    settings = svc.settings
    app, bot = create_app(svc)
    stats = _Stats()
    web_app = web.Application(client_max_size=MAX_BODY)
    slack_check = SlackCheck(bot.client)
    web_app.router.add_get("/healthz", healthz(svc, slack=None if playground else slack_check))
    web_app.router.add_get("/metrics", _metrics(svc, bot, stats))
    if playground is not None:
        playground.add_routes(web_app)
    if settings.slack_app_token is None:
        secret = settings.slack_signing_secret or ""
        edge = SlackEdge(app, signing_secret=secret, api_url=settings.slack_api_url)
        web_app.router.add_post("/slack/events", _events(edge, stats))
    runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    socket_mode: AsyncSocketModeHandler | None = None
    site = web.TCPSite(runner, settings.http_host, settings.port)
    bot.start()
    try:
        await site.start()
        if settings.slack_app_token is not None:
            socket_mode = CheckedSocketModeHandler(
                app, settings.slack_app_token, api_url=settings.slack_api_url
            )
            await socket_mode.connect_async()  # type: ignore[no-untyped-call]
            slack_check.socket = socket_mode.client
            log.info("Slack: Socket Mode connected; /healthz on port %s", settings.port)
        elif playground is None:
            log.info("Slack: POST /slack/events on %s:%s", settings.http_host, settings.port)
        yield bot
    finally:
        if playground is not None:
            await playground.close()  # the page's streams end, so the site can stop
        if socket_mode is not None:
            await socket_mode.close_async()  # type: ignore[no-untyped-call]
        if site in runner.sites:
            await site.stop()  # no new request while the work in hand ends
        await bot.stop()
        await bot.jobs.close()
        await runner.cleanup()


@dataclass
class _Stats:
    by_status: Counter[int] = field(default_factory=Counter)
    answer_s: float = 0.0  # time spent answering Slack's requests, in all


def _events(edge: SlackEdge, stats: _Stats) -> Any:
    async def events(request: web.Request) -> web.Response:
        started = time.monotonic()
        response = await edge.handle(request)
        stats.by_status[response.status] += 1
        stats.answer_s += time.monotonic() - started
        return response

    return events


def _metrics(svc: Services, bot: SlackBot, stats: _Stats) -> Any:
    async def metrics(request: web.Request) -> web.Response:
        """Prometheus text format: requests served, jobs by state, jobs followed now."""
        async with svc.sessions() as session:
            rows = (
                await session.execute(select(Job.state, func.count()).group_by(Job.state))
            ).all()
        lines = [
            "# TYPE clonebot_slack_requests_total counter",
            *(
                f'clonebot_slack_requests_total{{status="{status}"}} {n}'
                for status, n in sorted(stats.by_status.items())
            ),
            "# TYPE clonebot_slack_answer_seconds_total counter",
            f"clonebot_slack_answer_seconds_total {stats.answer_s:.6f}",
            "# TYPE clonebot_jobs gauge",
            *(f'clonebot_jobs{{state="{state}"}} {n}' for state, n in rows),
            "# TYPE clonebot_slack_jobs_followed gauge",
            f"clonebot_slack_jobs_followed {bot.jobs.following}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    return metrics

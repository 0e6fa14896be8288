"""The Slack app: Bolt's AsyncApp with clonebot's listeners, reached over HTTP or Socket Mode.

HTTP: ``POST /slack/events`` on PORT, every request's signature checked by Bolt (a forged or
stale one gets 401). Socket Mode when SLACK_APP_TOKEN is set: no public address needed. Either
way ``GET /healthz`` and ``GET /metrics`` (``bot.health``) answer on PORT.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp

from bot.health import healthz, metrics_handler
from bot.slack import actions, approvals, commands, home, submissions
from bot.slack.bot import SlackBot
from bot.slack.client import MeasuredWebClient
from bot.slack.edge import MAX_BODY, CheckedSocketModeHandler, SlackEdge
from bot.slack.health import SlackCheck
from bot.slack.notices import Notices
from bot.slack.progress import JobMessages
from bot.slack.retries import retry_handlers
from services.context import Services

if TYPE_CHECKING:
    from bot.playground.server import Playground

log = logging.getLogger(__name__)


def create_app(svc: Services) -> tuple[AsyncApp, SlackBot]:
    """The app with every listener registered, and what they share."""
    settings = svc.settings
    client = MeasuredWebClient(
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
    for listeners in (commands, actions, approvals, submissions, home):
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
    web_app = web.Application(client_max_size=MAX_BODY)
    slack_check = SlackCheck(bot.client)
    web_app.router.add_get("/healthz", healthz(svc, slack=None if playground else slack_check))
    web_app.router.add_get("/metrics", metrics_handler(svc))
    if playground is not None:
        playground.add_routes(web_app)
    if settings.slack_app_token is None:
        secret = settings.slack_signing_secret or ""
        edge = SlackEdge(app, signing_secret=secret, api_url=settings.slack_api_url)
        web_app.router.add_post("/slack/events", edge.handle)
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

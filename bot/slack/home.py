"""The App Home tab: published when the user opens it."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp

from bot.slack.bot import SlackBot
from bot.slack.payloads import Unreadable, read_event
from bot.slack.views import EnvironmentSummary, RouteSummary, home_view
from services import catalog

log = logging.getLogger(__name__)


def register(app: AsyncApp, bot: SlackBot) -> None:
    @app.event("app_home_opened")
    async def home_opened(event: dict[str, Any]) -> None:
        try:
            opened = read_event(event)
        except Unreadable as exc:  # an event has no one to answer: the log says why
            log.info("app_home_opened not read: %s", exc.reason)
            return
        if opened.tab in (None, "home") and opened.user is not None:
            await publish_home(bot, opened.user)


async def publish_home(bot: SlackBot, user: str) -> None:
    """The user's environments (every channel's: Home is no channel), their domains and
    routes, and the user's jobs in progress."""
    views = await catalog.visible_environments(bot.svc, user=user)
    running = await catalog.running_jobs(bot.svc, user=user)
    environments = [
        EnvironmentSummary(
            name=v.name, owner=v.owner, role=v.role, cloned_from=v.cloned_from,
            layers={layer.name: len(layer.nodes) for layer in v.env.layers}, down=v.down,
            expires_at=v.expires_at, stopped=v.stopped,
            engine=v.engine if len(bot.svc.fleet.names) > 1 else None, unreachable=v.unreachable,
        )
        for v in views
    ]  # fmt: skip
    routes = {
        r.domain: RouteSummary(r.domain, r.kind, r.primary, r.secondary, r.weight, r.sticky)
        for v in views
        for r in v.routes
    }
    view = home_view(
        user=user,
        environments=environments,
        domains={v.name: v.domains for v in views},
        routes=list(routes.values()),
        jobs=running,
        base_domain=bot.base_domain,
        port=bot.svc.settings.router_port,
    )
    await bot.client.views_publish(user_id=user, view=view)

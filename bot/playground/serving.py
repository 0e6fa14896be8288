"""``clonebot serve`` with the playground playing Slack: the settings it runs with, and the
Slack app served with the playground's routes beside ``/slack/events``."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from bot.playground.links import environment_links
from bot.playground.people import ADMIN, TEAM_CHANNEL
from bot.playground.server import Playground
from services.context import Services
from services.settings import Settings

if TYPE_CHECKING:
    from bot.slack.bot import SlackBot

LOOPBACK = "127.0.0.1"  # the page switches users, an admin among them: never another host's


def playground_settings(settings: Settings) -> Settings:
    """``settings`` for an app whose Slack is the playground: a token and a signing secret
    made for this process, the Web API on its own port, 127.0.0.1 only, the playground's
    admin among the admins and its team channel for notifications. Slack's own tokens, if
    set, are not used."""
    return settings.model_copy(
        update={
            "slack_bot_token": f"xoxb-playground-{secrets.token_hex(16)}",
            "slack_signing_secret": secrets.token_hex(32),
            "slack_app_token": None,
            "slack_api_url": f"http://{LOOPBACK}:{settings.port}/api/",
            "http_host": LOOPBACK,
            "admins": settings.admins | {ADMIN},
            "notify_channel": TEAM_CHANNEL,
        }
    )


@contextlib.asynccontextmanager
async def running_playground(
    svc: Services,
) -> AsyncIterator[tuple[Services, Playground, SlackBot]]:
    """The Slack app and the playground on 127.0.0.1:PORT until the block ends, with the
    services as the app sees them (the playground's settings) and the bot; OSError if PORT is
    taken."""
    from bot.slack.app import running_app  # Bolt loads only where it serves

    played = dataclasses.replace(svc, settings=playground_settings(svc.settings))
    playground = Playground(played.settings, links=lambda: environment_links(played))
    async with running_app(played, playground=playground) as bot:
        yield played, playground, bot

"""The doctor's Slack checks: the token, the scopes ``manifest.yml`` asks for, the way Slack
reaches clonebot, and the notify channel. Skipped while Slack is off."""

from __future__ import annotations

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from services.doctor import Check, Failed, Skipped
from services.settings import Settings

# manifest.yml's bot scopes (tests/bot/test_doctor.py checks the two agree)
SCOPES = frozenset(
    {"commands", "chat:write", "chat:write.public", "im:write", "channels:read", "groups:read"}
)
REINSTALL = "add the missing scopes to the app (manifest.yml) and reinstall it to the workspace"


def slack_checks(settings: Settings) -> list[Check]:
    client = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url)
    scopes: set[str] = set()
    authed: list[bool] = []

    async def auth() -> str:
        if settings.slack_bot_token is None:
            raise Skipped("Slack is off: no SLACK_BOT_TOKEN")
        if settings.playground:
            raise Skipped("CLONEBOT_PLAYGROUND=1: the playground plays Slack")
        try:
            answer = await client.auth_test()
        except SlackApiError as exc:
            raise Failed(
                f"Slack refused the bot token: {exc.response.get('error')}",
                "set SLACK_BOT_TOKEN to the app's Bot User OAuth Token (xoxb-…)",
            ) from None
        except OSError as exc:
            raise Failed(
                f"Slack does not answer at {settings.slack_api_url}: {exc}",
                "let this host reach slack.com (HTTPS), or fix SLACK_API_URL",
            ) from None
        headers = {k.lower(): v for k, v in answer.headers.items()}
        scopes.update(s.strip() for s in str(headers.get("x-oauth-scopes", "")).split(","))
        authed.append(True)
        return f"team {answer.get('team')} as @{answer.get('user')}"

    async def granted() -> str:
        _needs_slack(settings)
        if not authed:
            raise Skipped("the token did not pass")
        if missing := sorted(SCOPES - scopes):
            raise Failed(f"scopes not granted: {', '.join(missing)}", REINSTALL)
        return ", ".join(sorted(SCOPES))

    async def connection() -> str:
        _needs_slack(settings)
        if settings.slack_app_token is None:
            return f"HTTP: Slack posts to :{settings.port}/slack/events, signed (secret set)"
        app = AsyncWebClient(token=settings.slack_app_token, base_url=settings.slack_api_url)
        try:
            await app.apps_connections_open(app_token=settings.slack_app_token)
        except SlackApiError as exc:
            raise Failed(
                f"Socket Mode refused the app token: {exc.response.get('error')}",
                "set SLACK_APP_TOKEN to an app-level token (xapp-…) with connections:write, "
                "and turn Socket Mode on in the app",
            ) from None
        return "Socket Mode: the app token opens a connection"

    async def channel() -> str:
        _needs_slack(settings)
        if settings.notify_channel is None:
            raise Skipped("no CLONEBOT_NOTIFY_CHANNEL")
        try:
            info = (await client.conversations_info(channel=settings.notify_channel))["channel"]
        except SlackApiError as exc:
            raise Failed(
                f"{settings.notify_channel}: {exc.response.get('error')}",
                "set CLONEBOT_NOTIFY_CHANNEL to the ID of a channel the bot can see (C…)",
            ) from None
        if not info.get("is_member"):
            raise Failed(
                f"the bot is not in #{info.get('name')} ({settings.notify_channel})",
                f"invite it: /invite @clonebot in #{info.get('name')}",
            )
        return f"#{info.get('name')}: the bot is a member"

    return [
        ("slack token", auth),
        ("slack scopes", granted),
        ("slack connection", connection),
        ("notify channel", channel),
    ]


def _needs_slack(settings: Settings) -> None:
    if settings.slack_bot_token is None or settings.playground:
        raise Skipped("Slack is off")

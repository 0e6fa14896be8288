"""Slack's side of the bot's endpoint: the page's commands, clicks and submissions as the
requests Slack sends, signed with the playground's secret and posted to ``/slack/events``.

Signing as Slack does it: https://api.slack.com/authentication/verifying-requests-from-slack
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

from bot.playground.people import CHANNELS, TEAM_DOMAIN, TEAM_ID
from bot.playground.workspace import APP_ID, Params

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
TIMEOUT_S = 10.0  # Slack waits 3 s for an ack; a slow test machine gets more


@dataclass(frozen=True)
class Ack:
    """The app's answer to one request: its status and body (a modal's response_action)."""

    status: int
    body: str

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body.strip() else None
        except ValueError:
            return None


def sign(body: bytes, *, secret: str, timestamp: int) -> dict[str, str]:
    """Slack's v0 signature headers for ``body`` sent at ``timestamp``."""
    base = f"v0:{timestamp}:".encode() + body
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": signature}


def new_trigger_id() -> str:
    """A trigger id in Slack's shape."""
    return f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"


def slash_command(
    *,
    user: str,
    user_name: str,
    channel: str,
    command: str,
    text: str,
    response_url: str,
    trigger_id: str,
) -> dict[str, str]:
    """The form fields Slack posts for a slash command."""
    return {
        "token": "unused-verification-token",
        "team_id": TEAM_ID,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel,
        "channel_name": CHANNELS.get(channel, channel.lower()),
        "user_id": user,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": APP_ID,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id,
    }


def interaction(*, kind: str, user: str, trigger_id: str) -> Params:
    """The fields every interaction payload (block_actions, view_submission …) carries."""
    return {
        "type": kind,
        "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "api_app_id": APP_ID,
        "token": "unused-verification-token",
        "trigger_id": trigger_id,
        "is_enterprise_install": False,
    }


def event_callback(event: Params) -> Params:
    """The Events API envelope around an event (``app_home_opened`` …)."""
    return {
        "token": "unused-verification-token",
        "team_id": TEAM_ID,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": f"Ev{secrets.token_hex(5).upper()}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM_ID, "is_bot": True, "is_enterprise_install": False}],
    }


class SlackSide:
    """Posts signed requests to the app's ``/slack/events`` (the edge checks them as Slack's)."""

    def __init__(self, *, events_url: str, signing_secret: str) -> None:
        self._url = events_url
        self._secret = signing_secret
        self._session: aiohttp.ClientSession | None = None

    async def command(self, fields: dict[str, str]) -> Ack:
        return await self._post(urlencode(fields).encode(), content_type=FORM)

    async def interaction(self, payload: Params) -> Ack:
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return await self._post(body, content_type=FORM)

    async def event(self, event: Params) -> Ack:
        return await self._post(json.dumps(event_callback(event)).encode(), content_type=JSON)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _post(self, body: bytes, *, content_type: str) -> Ack:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
            self._session = aiohttp.ClientSession(timeout=timeout)
        headers = {"Content-Type": content_type} | sign(
            body, secret=self._secret, timestamp=int(time.time())
        )
        async with self._session.post(self._url, data=body, headers=headers) as response:
            return Ack(response.status, await response.text())

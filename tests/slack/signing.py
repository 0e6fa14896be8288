"""Requests to a bot's HTTP endpoint, built, encoded and signed exactly as Slack sends them.

The payload builders also give Socket Mode envelopes their payload (``SlackEmulator.socket_send``).
Signing: https://api.slack.com/authentication/verifying-requests-from-slack
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import aiohttp

from bot.playground.slack_side import new_trigger_id, sign
from bot.playground.workspace import APP_ID, TEAM_DOMAIN, TEAM_ID, Params

CHANNEL_ID = "C0CLONES"
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class SlackRequest:
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Reply:
    status: int
    text: str
    headers: dict[str, str]
    elapsed_s: float  # Slack gives up after 3 s

    def json(self) -> Any:
        return json.loads(self.text)


def trigger_id() -> str:
    """A fresh trigger id, in Slack's shape."""
    return new_trigger_id()


def slash_command(
    *,
    command: str,
    user_id: str,
    response_url: str,
    text: str = "",
    channel_id: str = CHANNEL_ID,
) -> dict[str, str]:
    """The fields Slack posts for a slash command."""
    return {
        "token": "unused-verification-token",
        "team_id": TEAM_ID,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel_id,
        "channel_name": channel_id.lower(),
        "user_id": user_id,
        "user_name": user_id.lower(),
        "command": command,
        "text": text,
        "api_app_id": APP_ID,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id(),
    }


def block_actions(
    *,
    user_id: str,
    message: Params,
    action_id: str,
    value: str,
    response_url: str,
    channel_id: str = CHANNEL_ID,
) -> Params:
    """A click on a button of a message, with the block it sits in found in the message."""
    block_id = next(
        (
            b.get("block_id", "")
            for b in message.get("blocks", [])
            if any(e.get("action_id") == action_id for e in b.get("elements", []))
        ),
        None,
    )
    assert block_id is not None, f"the message has no element with action_id {action_id!r}"
    action = {"type": "button", "action_id": action_id, "block_id": block_id, "value": value}
    return _interaction(user_id) | {
        "type": "block_actions",
        "container": {"type": "message", "message_ts": message["ts"], "channel_id": channel_id},
        "channel": {"id": channel_id, "name": channel_id.lower()},
        "message": message,
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [action | {"action_ts": f"{time.time():.6f}"}],
    }


def view_submission(*, user_id: str, view: Params, values: Params) -> Params:
    """The submission of a modal (as views.open answered it) with its input values.

    ``values`` is ``{block_id: {action_id: {"type": ..., "value" or "selected_option": ...}}}``.
    """
    submitted = view | {"state": {"values": values}}
    return _interaction(user_id) | {"type": "view_submission", "view": submitted}


def event_callback(event: Params) -> Params:
    """The Events API envelope around an event (``app_home_opened``, ``app_mention`` …)."""
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


def url_verification(challenge: str) -> Params:
    return {
        "token": "unused-verification-token",
        "challenge": challenge,
        "type": "url_verification",
    }


def _interaction(user_id: str) -> Params:
    return {
        "user": {"id": user_id, "username": user_id.lower(), "team_id": TEAM_ID},
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "api_app_id": APP_ID,
        "token": "unused-verification-token",
        "trigger_id": trigger_id(),
        "is_enterprise_install": False,
    }


def command_request(payload: dict[str, str]) -> SlackRequest:
    return SlackRequest(urlencode(payload).encode(), FORM)


def interaction_request(payload: Params) -> SlackRequest:
    return SlackRequest(urlencode({"payload": json.dumps(payload)}).encode(), FORM)


def event_request(body: Params) -> SlackRequest:
    return SlackRequest(json.dumps(body).encode(), "application/json")


def signed_headers(
    request: SlackRequest,
    *,
    signing_secret: str,
    age_s: int = 0,
    forged: bool = False,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
) -> dict[str, str]:
    """The headers Slack sends with a request.

    Args:
        age_s: how long ago Slack signed it; bolt refuses what is older than five minutes.
        forged: signed with another secret, as an attacker would.
        retry_num: Slack's redelivery number, for a request the bot did not ack in time.
    """
    secret = secrets.token_hex(16) if forged else signing_secret
    headers = {"Content-Type": request.content_type}
    headers |= sign(request.body, secret=secret, timestamp=int(time.time()) - age_s)
    if retry_num is not None:
        headers |= {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": retry_reason}
    return headers


class SlackSender:
    """Posts signed requests to a bot's endpoint (``http://127.0.0.1:PORT/slack/events``)."""

    def __init__(self, *, url: str, signing_secret: str) -> None:
        self.url = url
        self.signing_secret = signing_secret
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SlackSender:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, request: SlackRequest, **signing: Any) -> Reply:
        """Post the request; ``signing`` takes ``signed_headers``' options."""
        assert self._session is not None, "use SlackSender as an async context manager"
        headers = signed_headers(request, signing_secret=self.signing_secret, **signing)
        started = time.monotonic()
        async with self._session.post(self.url, data=request.body, headers=headers) as response:
            text = await response.text()
        return Reply(response.status, text, dict(response.headers), time.monotonic() - started)

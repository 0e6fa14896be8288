"""The edge of the Slack app: ``POST /slack/events`` (and Socket Mode's envelopes), before Bolt.

Each request gets an id for the log lines it causes (``services.log_context``) and is timed
(``clonebot_slack_ack_seconds{kind}``, ``clonebot_slack_requests_total{status}``); its
signature and age are checked, its body decoded and read into a checked payload
(``bot.slack.payloads``), and only then handed to Bolt, as JSON holding what the payload
models kept. Whatever fails gets a 4xx with a short reason and one log line that
names the reason, never the body, a token or the signing secret (Bolt's own verification
logs the whole body of a request it refuses, at INFO: it is turned off, as this edge does
its work).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from bot.slack.payloads import Unreadable, read_body, read_envelope
from services import metrics
from services.log_context import request_logged

log = logging.getLogger(__name__)

# Slack sends us back our own surfaces at most: a message (sections cut at 3,000 characters),
# a modal (the split form: 100 + 100 options) or the Home view (in app_home_opened). The
# largest we can build, every name and list at its limit, is 127 KB (the Home view; test:
# test_the_largest_request_our_surfaces_cause_is_far_under_the_limit): six times that, were
# every character sent as a \u escape, still fits. A longer request is refused with 413
# before any of it is read.
MAX_BODY = 1024 * 1024
_TOO_LARGE = f"the body is over {MAX_BODY} bytes, more than Slack sends"
SLACK_HOOKS = "https://hooks.slack.com/"
MAX_AGE_S = 5 * 60  # Slack's own advice: refuse a request signed more than five minutes ago
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
_RETRY = re.compile(r"[0-9]{1,3}")
_RETRY_REASON = re.compile(r"[a-z_]{1,40}")


class Refusal(Exception):
    """A request answered with ``status`` and ``reason``, before Bolt."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def slack_origins(api_url: str) -> tuple[str, ...]:
    """Where answers may go: Slack's hooks, or where SLACK_API_URL points (an emulator)."""
    api = urlsplit(api_url)
    return (SLACK_HOOKS, f"{api.scheme}://{api.netloc}/")


class CheckedSocketModeHandler(AsyncSocketModeHandler):
    """Socket Mode with the same reading of payloads as HTTP: Slack authenticated the socket,
    but a payload Bolt or a listener cannot read is still refused (acknowledged, logged),
    never half-handled."""

    def __init__(self, app: AsyncApp, app_token: str, *, api_url: str) -> None:
        super().__init__(app, app_token)
        self._origins = slack_origins(api_url)

    async def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        with request_logged():
            await self._handle(client, req)

    async def _handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:
        try:
            req.payload = read_envelope(req.payload, kind=req.type, slack_origins=self._origins)
        except Unreadable as exc:
            log.info("Slack request refused (socket): %s", exc.reason)
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            return
        await super().handle(client, req)


class SlackEdge:
    """Checks and reads every request to ``/slack/events``, then lets ``app`` answer it."""

    def __init__(self, app: AsyncApp, *, signing_secret: str, api_url: str) -> None:
        self._app = app
        self._secret = signing_secret.encode()
        self._origins = slack_origins(api_url)

    async def handle(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        with request_logged():
            kind, response = await self._answer(request)
        seconds = time.monotonic() - started
        metrics.observe_slack_request(kind=kind, status=response.status, seconds=seconds)
        return response

    async def _answer(self, request: web.Request) -> tuple[str, web.Response]:
        """The kind of request (for its metric) and Bolt's answer, or a refusal."""
        try:
            kept = await self._read(request)
        except Refusal as refusal:
            log.info("Slack request refused (%d): %s", refusal.status, refusal.reason)
            text = "invalid request" if refusal.status == 401 else refusal.reason
            return "refused", web.json_response({"error": text}, status=refusal.status)
        bolt_request = AsyncBoltRequest(
            body=json.dumps(kept), query=None, headers=self._headers(request)
        )
        response = await to_aiohttp_response(await self._app.async_dispatch(bolt_request))
        return _kind(kept), response

    async def _read(self, request: web.Request) -> dict[str, Any]:
        if (request.content_length or 0) > MAX_BODY:
            raise Refusal(413, f"the body is over {MAX_BODY} bytes, more than Slack sends")
        try:
            body = await request.read()  # the app's client_max_size stops a longer one
        except web.HTTPRequestEntityTooLarge:
            raise Refusal(
                413, f"the body is over {MAX_BODY} bytes, more than Slack sends"
            ) from None
        timestamp = self._timestamp(request)
        self._verify(request, body=body, timestamp=timestamp)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Refusal(400, "I could not read that: the body is not UTF-8") from None
        try:
            kept = read_body(text, content_type=request.content_type, slack_origins=self._origins)
        except Unreadable as exc:
            raise Refusal(400, exc.message) from None
        return kept

    @staticmethod
    def _timestamp(request: web.Request) -> str:
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise Refusal(401, "its timestamp is missing or not a number")
        if abs(time.time() - int(timestamp)) > MAX_AGE_S:
            raise Refusal(401, "its timestamp is more than five minutes away")
        return timestamp

    def _verify(self, request: web.Request, *, body: bytes, timestamp: str) -> None:
        """Slack's v0 signature over the raw bytes (slack_sdk's verifier decodes the body
        as UTF-8 first, and raises on anything else)."""
        signature = request.headers.get("X-Slack-Signature", "")
        base = b"v0:" + timestamp.encode() + b":" + body
        expected = "v0=" + hmac.new(self._secret, base, hashlib.sha256).hexdigest()
        if not _SIGNATURE.fullmatch(signature) or not hmac.compare_digest(expected, signature):
            raise Refusal(401, "its signature is wrong")

    @staticmethod
    def _headers(request: web.Request) -> dict[str, Any]:
        """What Bolt reads of the headers: the body is JSON now; Slack's redelivery marks."""
        headers = {"content-type": "application/json"}
        retry, reason = (
            request.headers.get(h, "") for h in ("X-Slack-Retry-Num", "X-Slack-Retry-Reason")
        )
        if _RETRY.fullmatch(retry) and _RETRY_REASON.fullmatch(reason):
            headers |= {"x-slack-retry-num": retry, "x-slack-retry-reason": reason}
        return headers


_KINDS = {
    "block_actions": "action",
    "view_submission": "view",
    "view_closed": "view",
    "event_callback": "event",
    "url_verification": "event",
    "app_rate_limited": "event",
}


def _kind(kept: dict[str, Any]) -> str:
    """command, action, view, event, or other (Slack's ssl_check)."""
    if "command" in kept:
        return "command"
    return _KINDS.get(kept.get("type", ""), "other")

"""The response_urls the playground hands the app (``/playground/response/{id}``), and what
Slack does with what the app posts there: delete or replace the message clicked on, or post
a new message, only visible to the user unless ``response_type`` is ``in_channel``."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from aiohttp import web

from bot.playground.api import message_event
from bot.playground.contract import check_blocks
from bot.playground.feed import Feed
from bot.playground.workspace import Params, Workspace

log = logging.getLogger(__name__)
KEPT = 1000  # response_urls remembered; Slack's expire after 30 minutes


@dataclass(frozen=True)
class Origin:
    """Where a request came from, for the answers posted to its response_url."""

    user: str
    channel: str
    message_ts: str | None = None  # the message clicked on


class Responses:
    def __init__(self, *, base: str, workspace: Workspace, feed: Feed) -> None:
        self._base = base
        self._workspace = workspace
        self._feed = feed
        self._origins: dict[str, Origin] = {}  # by the id ending a response_url, oldest first

    def url_for(self, origin: Origin) -> str:
        """A new response_url for a request from ``origin``."""
        if len(self._origins) >= KEPT:
            del self._origins[next(iter(self._origins))]
        key = secrets.token_urlsafe(16)
        self._origins[key] = origin
        return f"{self._base}/playground/response/{key}"

    async def handle(self, request: web.Request) -> web.Response:
        """``POST /playground/response/{id}``: what the app's ``respond()`` sends."""
        origin = self._origins.get(request.match_info["id"])
        try:
            answer = await request.json()
        except ValueError:
            answer = None
        if origin is None or not isinstance(answer, dict):
            log.error("Slack would refuse a post to a response_url: unknown url or not JSON")
            return web.Response(status=404 if origin is None else 400, text="invalid_payload")
        problems = check_blocks(answer.get("blocks", []))
        if problems:
            log.error("Slack would refuse the bot's response: %s", "; ".join(problems))
            return web.Response(status=400, text="invalid_blocks")
        self.apply(origin, answer)
        return web.Response(text="ok")

    def apply(self, origin: Origin, answer: Params) -> None:
        """What Slack does with a response: delete, replace, or post (ephemeral by default)."""
        feed, channel = self._feed, origin.channel
        clicked = feed.find(channel=channel, ts=origin.message_ts) if origin.message_ts else None
        content = {k: answer[k] for k in ("text", "blocks") if k in answer}
        stored = self._workspace.messages.get(channel, {})
        if clicked is not None and answer.get("delete_original"):
            stored.pop(clicked["ts"], None)
            feed.delete(channel=channel, ts=clicked["ts"])
        elif clicked is not None and answer.get("replace_original"):
            if clicked["ts"] in stored:  # the bot may chat.update it later
                stored[clicked["ts"]] |= {"blocks": []} | content
            feed.message(clicked | {"blocks": []} | content)
        elif answer.get("response_type") == "in_channel":
            posted = self._workspace.post_message({"channel": channel} | content)
            feed.message(message_event(channel=posted["channel"], message=posted["message"]))
        else:
            params = {"channel": channel, "user": origin.user} | content
            message = {"ts": self._workspace.post_ephemeral(params)["message_ts"]} | content
            feed.message(message_event(channel=channel, message=message, ephemeral_to=origin.user))

"""The playground's routes, added to the Slack app's own web application on 127.0.0.1:PORT.

``GET /`` and ``/static/…``: the page. ``/api/{method}``: the Web API the bot calls.
``/playground/…``: the page's requests (protocol of issue 10), the stream of what the bot
did, and the response_urls the bot's ``respond()`` posts to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.playground.api import WebApi
from bot.playground.contract import check_view
from bot.playground.feed import Feed
from bot.playground.people import CHANNEL, CHANNELS, PEOPLE, TEAM_ID, Person
from bot.playground.responses import Origin, Responses
from bot.playground.slack_side import (
    Ack,
    SlackSide,
    interaction,
    new_trigger_id,
    slash_command,
)
from bot.playground.workspace import BOT_ID, Params, Workspace
from services.settings import Settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
COMMANDS = ("/clone", "/env")
RESPONSE_ACTIONS = (None, "errors", "clear", "update", "push")
TRIGGERS_KEPT = 1000


class PageError(Exception):
    """A page request the playground cannot play: answered ``{"ok": false, "error": …}``."""


class Playground:
    """Slack played in memory for the app served on ``settings.port`` (127.0.0.1)."""

    def __init__(
        self,
        settings: Settings,
        *,
        people: Sequence[Person] = PEOPLE,
        static: Path = STATIC,
        links: Callable[[], Awaitable[Params]] | None = None,
    ) -> None:
        self.port = settings.port
        self.base = f"http://127.0.0.1:{settings.port}"
        self.people = list(people)
        self.feed = Feed()
        self.workspace = Workspace(team_id=TEAM_ID, names={p.id: p.name for p in people} | CHANNELS)
        self._triggers: dict[str, str] = {}
        self.responses = Responses(base=self.base, workspace=self.workspace, feed=self.feed)
        self._static = static
        self._links = links
        self.api = WebApi(
            workspace=self.workspace,
            feed=self.feed,
            token=settings.slack_bot_token or "",
            triggers=self._triggers,
        )
        self.slack = SlackSide(
            events_url=f"{self.base}/slack/events",
            signing_secret=settings.slack_signing_secret or "",
        )

    @property
    def url(self) -> str:
        return f"{self.base}/"

    def add_routes(self, app: web.Application) -> None:
        own = _OwnPage(self.port)
        app.router.add_get("/", own(self._index))
        if self._static.is_dir():
            app.router.add_static("/static/", self._static)
        app.router.add_route("*", "/api/{method}", self.api.handle)
        app.router.add_get("/playground/stream", own(self.feed.stream))
        app.router.add_get("/playground/users", own(self._users))
        app.router.add_post("/playground/response/{id}", self.responses.handle)
        if self._links is not None:
            app.router.add_get("/playground/links", own(self._answer_links))
        for name, handler in (
            ("command", self.command),
            ("action", self.action),
            ("submit", self.submit),
            ("close", self.close_view),
            ("home", self.open_home),
        ):
            app.router.add_post(f"/playground/{name}", own(_page_request(handler)))

    async def close(self) -> None:
        self.feed.close()
        await self.slack.close()

    # -- the page's requests -----------------------------------------------------------------

    async def command(self, body: Params) -> Params:
        """A slash command typed in a channel."""
        user, channel = self._user(body), self._channel(body)
        command, _, text = str(body.get("text", "")).strip().partition(" ")
        if command not in COMMANDS:
            raise PageError(f"{command[:40]} is not a command here")
        fields = slash_command(
            user=user,
            user_name=self.workspace.names.get(user, user.lower()),
            channel=channel,
            command=command,
            text=text.strip(),
            response_url=self.responses.url_for(Origin(user, channel)),
            trigger_id=self._trigger(user),
        )
        ack = _accepted(await self.slack.command(fields))
        if ack.body.strip():  # an ack with a message: Slack shows it to the user alone
            answer = ack.json()
            answer = answer if isinstance(answer, dict) else {"text": ack.body}
            self.responses.apply(Origin(user, channel), answer)
        return {"ok": True}

    async def action(self, body: Params) -> Params:
        """A click (or a choice) on an element of a message or a modal."""
        user, action = self._user(body), body.get("action")
        if not isinstance(action, dict) or not isinstance(action.get("action_id"), str):
            raise PageError("an action needs an action_id")
        payload = interaction(kind="block_actions", user=user, trigger_id=self._trigger(user))
        state = body.get("state") if isinstance(body.get("state"), dict) else {"values": {}}
        payload |= {"actions": [action | {"action_ts": _now()}], "state": state}
        view_id = body.get("view_id")
        if view_id:
            view = self._view(str(view_id))
            payload |= {"container": {"type": "view", "view_id": view["id"]}}
            payload |= {"view": view | {"state": state}}
        else:
            payload |= self._clicked_message(user=user, body=body)
        _accepted(await self.slack.interaction(payload))
        return {"ok": True}

    async def submit(self, body: Params) -> Params:
        """A modal's submit button: the bot's ack closes it, updates it or shows errors."""
        user, view = self._user(body), self._view(str(body.get("view_id")))
        values = body.get("values") if isinstance(body.get("values"), dict) else {}
        payload = interaction(kind="view_submission", user=user, trigger_id=self._trigger(user))
        payload |= {"view": view | {"state": {"values": values}}, "response_urls": []}
        answer = _accepted(await self.slack.interaction(payload)).json() or {}
        action = answer.get("response_action")
        if action not in RESPONSE_ACTIONS:
            raise PageError(f"the app answered response_action {action!r}")
        if action is None:
            self.feed.close_view(view["id"])
        elif action == "clear":
            for view_id in self.feed.views_of(user):
                self.feed.close_view(view_id)
        elif action in ("update", "push"):
            self._show_view(answer.get("view"), user=user, how=action, view_id=view["id"])
        return {"ok": True, "response_action": action} | {
            k: answer[k] for k in ("errors", "view") if k in answer
        }

    async def close_view(self, body: Params) -> Params:
        """A modal's close button: Slack tells the app only if the view asked for it."""
        user, view = self._user(body), self._view(str(body.get("view_id")))
        if view.get("notify_on_close"):
            payload = interaction(kind="view_closed", user=user, trigger_id=self._trigger(user))
            _accepted(await self.slack.interaction(payload | {"view": view, "is_cleared": False}))
        self.feed.close_view(view["id"])
        return {"ok": True}

    async def open_home(self, body: Params) -> Params:
        """The user opened the app's Home tab (beyond protocol.md: Slack tells the app)."""
        user = self._user(body)
        event = {"type": "app_home_opened", "user": user, "channel": self.workspace.dm(user)}
        _accepted(await self.slack.event(event | {"tab": "home", "event_ts": _now()}))
        return {"ok": True}

    # -- helpers -----------------------------------------------------------------------------

    def _clicked_message(self, *, user: str, body: Params) -> Params:
        channel, ts = self._channel(body), str(body.get("message_ts"))
        shown = self.feed.find(channel=channel, ts=ts)
        if shown is None:
            raise PageError(f"no message {ts} in {channel}")
        ephemeral = shown["ephemeral_to"] is not None
        fields: Params = {
            "container": {
                "type": "message",
                "message_ts": ts,
                "channel_id": channel,
                "is_ephemeral": ephemeral,
            },
            "channel": {"id": channel, "name": CHANNELS.get(channel, channel.lower())},
            "response_url": self.responses.url_for(Origin(user, channel, ts)),
        }
        if not ephemeral:  # Slack sends the message clicked on, unless only one user saw it
            message = {k: shown[k] for k in ("ts", "text", "blocks", "user")}
            fields["message"] = {"type": "message", "bot_id": BOT_ID} | message
        return fields

    def _show_view(self, view: Any, *, user: str, how: str, view_id: str) -> None:
        problems = check_view(view)
        if problems:
            log.error("Slack would refuse the bot's %s view: %s", how, "; ".join(problems))
            raise PageError("the app answered with a view Slack would refuse")
        stored = self.workspace.store_view(view, view_id=view_id if how == "update" else None)
        self.feed.view(view=stored, user=user, how=how)

    def _user(self, body: Params) -> str:
        user = body.get("user")
        if user not in {p.id for p in self.people}:
            raise PageError(f"{str(user)[:40]} is not a user of the playground")
        return str(user)

    @staticmethod
    def _channel(body: Params) -> str:
        channel = body.get("channel") or CHANNEL
        if channel not in CHANNELS:
            raise PageError(f"{str(channel)[:40]} is not a channel of the playground")
        return str(channel)

    def _view(self, view_id: str) -> Params:
        if self.feed.open_view(view_id) is None:
            raise PageError(f"no open view {view_id[:40]}")
        return self.workspace.views[view_id]

    def _trigger(self, user: str) -> str:
        if len(self._triggers) >= TRIGGERS_KEPT:  # Slack's last three seconds
            del self._triggers[next(iter(self._triggers))]
        trigger_id = new_trigger_id()
        self._triggers[trigger_id] = user
        return trigger_id

    async def _users(self, request: web.Request) -> web.Response:
        return web.json_response([p.to_dict() for p in self.people])

    async def _answer_links(self, request: web.Request) -> web.Response:
        assert self._links is not None
        return web.json_response(await self._links())

    async def _index(self, request: web.Request) -> web.StreamResponse:
        page = self._static / "index.html"
        if not page.is_file():
            return web.Response(status=404, text="the playground's page is missing")
        return web.FileResponse(page)


class _OwnPage:
    """Only the playground's own page may use it. Any site open in the user's browser can send
    requests to 127.0.0.1 (a form posted there, text/plain so that no CORS check stops it), or
    reach it under a name of its own that resolves to 127.0.0.1 (DNS rebinding); the page's
    requests act as any of its users, an admin among them. So: the Host must be the
    playground's, an Origin (sent with every POST) its own, and a body JSON by its type, which
    another site's page cannot send without the browser asking first (and being refused)."""

    def __init__(self, port: int) -> None:
        self._hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}

    def __call__(self, handler: Any) -> Any:
        async def guarded(request: web.Request) -> web.StreamResponse:
            origin = request.headers.get("Origin")
            if request.host not in self._hosts or (
                origin is not None and origin.removeprefix("http://") not in self._hosts
            ):
                return web.json_response(
                    {"ok": False, "error": "not the playground's page"}, status=403
                )
            if request.method == "POST" and request.content_type != "application/json":
                return web.json_response(
                    {"ok": False, "error": "send application/json"}, status=415
                )
            response: web.StreamResponse = await handler(request)
            return response

        return guarded


def _page_request(handler: Any) -> Any:
    """A page endpoint: a JSON object in, a JSON answer out, a PageError as ok: false."""

    async def answer(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"ok": False, "error": "send a JSON object"}, status=400)
        try:
            return web.json_response(await handler(body))
        except PageError as exc:
            return web.json_response({"ok": False, "error": str(exc)})

    return answer


def _accepted(ack: Ack) -> Ack:
    if ack.status != 200:
        raise PageError(f"the app answered {ack.status}: {ack.body[:200]}")
    return ack


def _now() -> str:
    return f"{time.time():.6f}"

"""The Web API the bot calls while the playground plays Slack: ``/api/{method}``.

Every call is checked against Slack's published spec and Block Kit's limits
(``bot.playground.contract``) and answered from the in-memory workspace. A call Slack would
refuse is refused as Slack refuses it, and logged as an error: the playground must show the
bot's mistakes as Slack would, never hide them, and never stop for them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from bot.playground.contract import check_arguments, check_blocks, check_view, spec_methods
from bot.playground.feed import Event, Feed
from bot.playground.people import BOT_USER
from bot.playground.workspace import HANDLERS, Answer, Params, Workspace

log = logging.getLogger(__name__)
JSON_ARGUMENTS = ("blocks", "attachments", "view", "metadata")  # JSON strings in a form body


async def read_params(request: web.Request) -> tuple[Params, list[str]]:
    """Query and body arguments, JSON or form-encoded; JSON-in-form arguments decoded."""
    params: Params = dict(request.query)
    problems = []
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return params, ["the body is not a JSON object"]
        params |= body
    else:
        params |= {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    for name in JSON_ARGUMENTS:
        if isinstance(params.get(name), str):
            try:
                params[name] = json.loads(params[name])
            except ValueError:
                problems.append(f"{name} is not JSON")
    return params, problems


def content_problems(method: str, params: Params) -> tuple[str, list[str]]:
    """The error Slack answers for a view or message it cannot show, and why."""
    if method.startswith("views."):
        return "invalid_arguments", check_view(params.get("view"))
    if "blocks" in params:
        return "invalid_blocks", check_blocks(params["blocks"])
    if method in ("chat.postMessage", "chat.postEphemeral") and not (
        params.get("text") or params.get("attachments")
    ):
        return "no_text", ["a message needs text, blocks or attachments"]
    return "", []


def message_event(
    *, channel: str, message: Params, ephemeral_to: str | None = None, user: str = BOT_USER
) -> Event:
    """A message as the page shows it (protocol: ``{"kind": "message", …}``)."""
    return {
        "kind": "message",
        "channel": channel,
        "ts": message["ts"],
        "user": message.get("user", user),
        "text": message.get("text", ""),
        "blocks": message.get("blocks") or [],
        "ephemeral_to": ephemeral_to,
        "thread_ts": message.get("thread_ts"),
    }


class WebApi:
    """Answers the bot's calls (its token only) and tells the feed what changed."""

    def __init__(
        self, *, workspace: Workspace, feed: Feed, token: str, triggers: dict[str, str]
    ) -> None:
        self._workspace = workspace
        self._feed = feed
        self._token = token
        self._triggers = triggers  # trigger_id -> the user whose request carried it

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params, problems = await read_params(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        token = str(params.pop("token", token))
        return web.json_response(self.answer(method, params, token=token, problems=problems))

    def answer(self, method: str, params: Params, *, token: str, problems: list[str]) -> Answer:
        """Slack's answer to one call, refusals included."""
        if method not in spec_methods():
            return _refused(method, "unknown_method", ["not a method of Slack's Web API"])
        if method not in HANDLERS:
            return _refused(method, "unknown_method", ["a method the playground does not play"])
        if token != self._token:
            return _refused(method, "invalid_auth", ["not the bot's token"])
        problems = problems + check_arguments(method, params)
        if problems:
            refusal = _refused(method, "invalid_arguments", problems)
            return refusal | {"response_metadata": {"messages": problems}}
        error, problems = content_problems(method, params)
        if problems:
            return _refused(method, error, problems)
        user = self._triggers.get(str(params.get("trigger_id")))
        if method in ("views.open", "views.push") and user is None:
            return _refused(method, "invalid_trigger_id", ["a trigger_id Slack never sent"])
        answer = self._workspace.answer(method, params)
        if answer["ok"]:
            self._show(method, answer, user=user)
        return answer

    def _show(self, method: str, answer: Answer, *, user: str | None) -> None:
        feed = self._feed
        if method in ("chat.postMessage", "chat.update"):
            feed.message(message_event(channel=answer["channel"], message=answer["message"]))
        elif method == "chat.postEphemeral":
            posted = self._workspace.ephemeral[-1]  # its "user" is whom it is shown to
            shown = {k: v for k, v in posted.items() if k != "user"}
            feed.message(
                message_event(channel=posted["channel"], message=shown, ephemeral_to=posted["user"])
            )
        elif method == "chat.delete":
            feed.delete(channel=answer["channel"], ts=answer["ts"])
        elif method in ("views.open", "views.push") and user is not None:
            feed.view(view=answer["view"], user=user, how=method.removeprefix("views."))
        elif method == "views.update":
            open_view = feed.open_view(answer["view"]["id"])
            if open_view is not None:  # a closed modal stays closed
                feed.view(view=answer["view"], user=open_view["user"], how="update")
        elif method == "views.publish":
            feed.home(user=_home_owner(self._workspace, answer["view"]["id"]), view=answer["view"])


def _home_owner(workspace: Workspace, view_id: str) -> str:
    return next(user for user, home in workspace.homes.items() if home == view_id)


def _refused(method: str, error: str, problems: list[str]) -> dict[str, Any]:
    log.error("Slack would refuse the bot's %s (%s): %s", method, error, "; ".join(problems))
    return {"ok": False, "error": error}

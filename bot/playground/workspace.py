"""The state of a Slack workspace played in memory, and the answers its Web API methods give.

The playground (``bot.playground.server``) and the tests' emulator (``tests.slack.emulator``)
both answer from it.

Answers carry the fields slack_sdk and slack_bolt read (``ts``, ``channel``, ``message``,
``view.id``/``hash``, ``auth.test``'s ids); everything else a real answer holds is left out.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TEAM_ID = "T0CLONEBOT"
TEAM_DOMAIN = "clonebot-test"
APP_ID = "A0CLONEBOT"
BOT_ID = "B0CLONEBOT"
BOT_USER_ID = "U0CLONEBOT"

Params = dict[str, Any]
Answer = dict[str, Any]


class SlackError(Exception):
    """A refusal Slack answers as ``{"ok": false, "error": error}``."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class Workspace:
    """Messages by channel and ts, views by id, each user's Home view and DM channel.

    ``names`` gives users and channels their names (``users.info``, ``conversations.info``);
    an id it lacks is named after itself."""

    team_id: str = TEAM_ID
    names: dict[str, str] = field(default_factory=dict)
    messages: dict[str, dict[str, Params]] = field(default_factory=dict)
    ephemeral: list[Params] = field(default_factory=list)
    views: dict[str, Params] = field(default_factory=dict)
    homes: dict[str, str] = field(default_factory=dict)
    dms: dict[str, str] = field(default_factory=dict)
    outside: set[str] = field(default_factory=set)  # channels the bot is not a member of
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def message(self, channel: str, ts: str) -> Params:
        """The message as it stands now (text, blocks, attachments)."""
        return self.messages[self._channel(channel)][ts]

    def home(self, user_id: str) -> Params | None:
        """The Home tab view last published for the user."""
        view_id = self.homes.get(user_id)
        return None if view_id is None else self.views[view_id]

    def dm(self, user_id: str) -> str:
        """The id of the bot's DM channel with the user, opened on first use."""
        return self.dms.setdefault(user_id, f"D{user_id[1:]}")

    def answer(self, method: str, params: Params) -> Answer:
        """Slack's answer to a call whose arguments already met the spec."""
        try:
            return {"ok": True, **HANDLERS[method](self, params)}
        except SlackError as exc:
            return {"ok": False, "error": exc.error}

    def _channel(self, channel: str) -> str:
        # a user id as channel posts in the bot's DM with that user, as on Slack
        return self.dm(channel) if channel[:1] in ("U", "W") else channel

    def _ts(self) -> str:
        return f"{int(time.time())}.{next(self._serial):06d}"

    def _stored(self, channel: str, ts: str) -> Params:
        try:
            return self.message(channel, ts)
        except KeyError:
            raise SlackError("message_not_found") from None

    def auth_test(self, params: Params) -> Answer:
        return {
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": TEAM_DOMAIN,
            "user": "clonebot",
            "team_id": self.team_id,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def post_message(self, params: Params) -> Answer:
        channel, ts = self._channel(params["channel"]), self._ts()
        message = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": ts}
        message |= _content(params, text="")
        if "thread_ts" in params:
            message["thread_ts"] = params["thread_ts"]
        self.messages.setdefault(channel, {})[ts] = message
        return {"channel": channel, "ts": ts, "message": message}

    def update_message(self, params: Params) -> Answer:
        channel = self._channel(params["channel"])
        message = self._stored(channel, params["ts"])
        message |= _content(params)  # what the call leaves out stays, as on Slack
        return {"channel": channel, "ts": params["ts"], "text": message["text"], "message": message}

    def post_ephemeral(self, params: Params) -> Answer:
        ts = self._ts()
        self.ephemeral.append(
            {"channel": self._channel(params["channel"]), "user": params["user"], "ts": ts}
            | _content(params, text="")
        )
        return {"message_ts": ts}

    def delete_message(self, params: Params) -> Answer:
        channel = self._channel(_given(params, "channel", error="channel_not_found"))
        ts = str(_given(params, "ts", error="message_not_found"))
        self._stored(channel, ts)
        del self.messages[channel][ts]
        return {"channel": channel, "ts": ts}

    def get_permalink(self, params: Params) -> Answer:
        channel, ts = self._channel(params["channel"]), params["message_ts"]
        self._stored(channel, ts)
        link = f"https://{TEAM_DOMAIN}.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        return {"channel": channel, "permalink": link}

    def open_view(self, params: Params) -> Answer:
        return {"view": self.store_view(params["view"])}

    def update_view(self, params: Params) -> Answer:
        by_external = {v["external_id"]: v["id"] for v in self.views.values() if v["external_id"]}
        view_id = params.get("view_id") or by_external.get(params.get("external_id"))
        if view_id not in self.views:
            raise SlackError("not_found")
        _check_hash(self.views[view_id], params)
        return {"view": self.store_view(params["view"], view_id=view_id)}

    def publish_view(self, params: Params) -> Answer:
        user_id, view_id = params["user_id"], self.homes.get(params["user_id"])
        if view_id is not None:
            _check_hash(self.views[view_id], params)
        view = self.store_view(params["view"], view_id=view_id)
        self.homes[user_id] = view["id"]
        return {"view": view}

    def store_view(self, view: Params, *, view_id: str | None = None) -> Params:
        view_id = view_id or f"V{next(self._serial):08X}"
        stored: Params = {
            "id": view_id,
            "team_id": self.team_id,
            "app_id": APP_ID,
            "bot_id": BOT_ID,
            "private_metadata": "",
            "callback_id": "",
            "external_id": "",
            "state": {"values": {}},
            "root_view_id": view_id,
            "previous_view_id": None,
        }
        self.views[view_id] = stored | view | {"hash": secrets.token_hex(8)}
        return self.views[view_id]

    def open_conversation(self, params: Params) -> Answer:
        if "channel" in params:
            return {"channel": {"id": params["channel"]}, "already_open": True}
        users = _given(params, "users", error="users_list_not_supplied").split(",")
        if len(users) != 1:
            raise SlackError("not_supported_by_emulator")  # a group DM; the bot never opens one
        return {"channel": {"id": self.dm(users[0])}}

    def conversation_info(self, params: Params) -> Answer:
        channel = _given(params, "channel", error="channel_not_found")
        is_im = channel.startswith("D")
        name = self.names.get(channel, channel.lower())
        info = {"id": channel, "name": name, "is_channel": not is_im, "is_im": is_im}
        info |= {"is_private": channel[:1] in ("D", "G"), "is_member": channel not in self.outside}
        if is_im:
            info["user"] = next((u for u, dm in self.dms.items() if dm == channel), None)
        return {"channel": info}

    def user_info(self, params: Params) -> Answer:
        user_id = _given(params, "user", error="user_not_found")
        name = self.names.get(user_id, user_id.lower())
        profile = {"display_name": name, "real_name": name.title()}
        user = {"id": user_id, "team_id": self.team_id, "name": name, "real_name": name.title()}
        return {
            "user": user
            | {"tz": "UTC", "is_bot": False, "is_admin": False, "deleted": False}
            | {"profile": profile}
        }


def _content(params: Params, **defaults: Any) -> Params:
    return defaults | {k: params[k] for k in ("text", "blocks", "attachments") if k in params}


def _given(params: Params, name: str, *, error: str) -> Any:
    # arguments the spec leaves optional but Slack refuses to go without
    if name not in params:
        raise SlackError(error)
    return params[name]


def _check_hash(view: Params, params: Params) -> None:
    # the hash guards against overwriting a view someone changed since it was read
    if params.get("hash") not in (None, view["hash"]):
        raise SlackError("hash_conflict")


HANDLERS: dict[str, Callable[[Workspace, Params], Answer]] = {
    "auth.test": Workspace.auth_test,
    "chat.postMessage": Workspace.post_message,
    "chat.update": Workspace.update_message,
    "chat.postEphemeral": Workspace.post_ephemeral,
    "chat.delete": Workspace.delete_message,
    "chat.getPermalink": Workspace.get_permalink,
    "views.open": Workspace.open_view,
    "views.push": Workspace.open_view,
    "views.update": Workspace.update_view,
    "views.publish": Workspace.publish_view,
    "conversations.open": Workspace.open_conversation,
    "conversations.info": Workspace.conversation_info,
    "users.info": Workspace.user_info,
}

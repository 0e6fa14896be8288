"""What Slack sends, read and checked once, at the edge: a small typed reader of payloads.

A request's body is read into one of the models below (pydantic, strict types, unknown
fields dropped). Only what a model kept goes on to Bolt and to the listeners, so neither ever
meets a ``user`` that is a number, ``actions`` that are a string or a ``null`` payload; and the
listeners read their values through the ``read_*`` functions, which also check what the
values mean (a button's environments). Whatever cannot be read raises ``Unreadable``: the HTTP
edge answers it with a 400, a listener with an ephemeral "I could not read that".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from bot.slack import ids
from services.durations import parse_duration
from services.errors import BadRequest, InvalidName
from services.naming import validate_name


class Unreadable(BadRequest):
    """A request that is not what Slack sends, or not what clonebot's messages and forms ask."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"I could not read that: {reason}")
        self.reason = reason


UserId = Annotated[str, StringConstraints(pattern=r"^[UW][A-Z0-9]{1,30}$")]
ChannelId = Annotated[str, StringConstraints(pattern=r"^[CGD][A-Z0-9]{1,30}$")]
TeamId = Annotated[str, StringConstraints(pattern=r"^[TE][A-Z0-9]{1,30}$")]
Token = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,255}$")]  # ids, triggers
Url = Annotated[str, StringConstraints(pattern=r"^https?://[^\s]{1,2000}$")]
Short = Annotated[str, StringConstraints(max_length=255)]
Text = Annotated[str, StringConstraints(max_length=40_000)]  # a slash command's: a message


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


# -- slash commands (form fields) ----------------------------------------------------------


class SlashCommand(_Model):
    command: Annotated[str, StringConstraints(pattern=r"^/[a-z0-9_-]{1,31}$")]
    user_id: UserId
    text: Text = ""
    channel_id: ChannelId | None = None
    team_id: TeamId | None = None
    api_app_id: Token | None = None
    trigger_id: Token | None = None
    response_url: Url | None = None
    is_enterprise_install: Literal["true", "false"] | None = None


class SslCheck(_Model):
    ssl_check: Literal["1"]


# -- interactions (the JSON in the ``payload`` form field) -----------------------------------


class User(_Model):
    id: UserId
    team_id: TeamId | None = None


class Team(_Model):
    id: TeamId


class Channel(_Model):
    id: ChannelId


class Action(_Model):
    action_id: Short
    block_id: Short | None = None
    type: Short
    value: Annotated[str, StringConstraints(max_length=2000)] | None = None


class BlockActions(_Model):
    type: Literal["block_actions"]
    user: User
    actions: Annotated[list[Action], Field(min_length=1, max_length=25)]
    team: Team | None = None
    channel: Channel | None = None
    api_app_id: Token | None = None
    trigger_id: Token | None = None
    response_url: Url | None = None
    is_enterprise_install: bool | None = None


class Option(_Model):
    value: Annotated[str, StringConstraints(max_length=2000)]


class InputValue(_Model):
    type: Short
    value: Annotated[str, StringConstraints(max_length=3000)] | None = None
    selected_option: Option | None = None
    selected_options: Annotated[list[Option], Field(max_length=100)] | None = None
    selected_conversation: ChannelId | None = None


class ViewState(_Model):
    values: dict[Short, dict[Short, InputValue]] = {}


class View(_Model):
    id: Token | None = None
    type: Literal["modal", "home"]
    callback_id: Short = ""
    private_metadata: Annotated[str, StringConstraints(max_length=3000)] = ""
    state: ViewState = ViewState()


class ViewSubmission(_Model):
    type: Literal["view_submission", "view_closed"]
    user: User
    view: View
    team: Team | None = None
    api_app_id: Token | None = None
    trigger_id: Token | None = None
    is_enterprise_install: bool | None = None


# -- the Events API (a JSON body) ------------------------------------------------------------


class Event(_Model):
    type: Short
    user: UserId | None = None
    channel: Short | None = None
    tab: Short | None = None
    event_ts: Short | None = None


class EventCallback(_Model):
    type: Literal["event_callback"]
    event: Event
    team_id: TeamId | None = None
    api_app_id: Token | None = None
    event_id: Token | None = None
    event_time: int | None = None


class UrlVerification(_Model):
    type: Literal["url_verification"]
    challenge: Annotated[str, StringConstraints(max_length=255)]


class RateLimited(_Model):
    type: Literal["app_rate_limited"]


_INTERACTIONS: dict[str, type[_Model]] = {
    "block_actions": BlockActions,
    "view_submission": ViewSubmission,
    "view_closed": ViewSubmission,
}
_EVENTS: dict[str, type[_Model]] = {
    "event_callback": EventCallback,
    "url_verification": UrlVerification,
    "app_rate_limited": RateLimited,
}


def read_body(text: str, *, content_type: str, slack_origins: Sequence[str]) -> dict[str, Any]:
    """The body Bolt may see: what the models kept of a request's decoded text.

    A ``response_url`` must start with one of ``slack_origins``: the bot posts its answers
    there, and must not be sent to post anywhere else."""
    return _answered_at_slack(_read(text, content_type=content_type), slack_origins)


def read_envelope(payload: Any, *, kind: str, slack_origins: Sequence[str]) -> dict[str, Any]:
    """What the models kept of a Socket Mode envelope's payload (``kind`` is the envelope's
    type: ``slash_commands``, ``interactive`` or ``events_api``)."""
    if not isinstance(payload, dict):
        raise Unreadable("the payload is not a JSON object")
    if kind == "slash_commands":
        kept = _validated(SlashCommand, payload)
    elif kind in ("interactive", "events_api"):
        kept = _kept(payload, _INTERACTIONS if kind == "interactive" else _EVENTS)
    else:
        raise Unreadable(f"clonebot takes no envelope of type {kind[:40]!r}")
    return _answered_at_slack(kept, slack_origins)


def _answered_at_slack(kept: dict[str, Any], slack_origins: Sequence[str]) -> dict[str, Any]:
    url = kept.get("response_url")
    if url is not None and not url.startswith(tuple(slack_origins)):
        raise Unreadable("its response_url is not Slack's")
    return kept


def _read(text: str, *, content_type: str) -> dict[str, Any]:
    if content_type == "application/json":
        return _kept(_json_object(text, what="the body"), _EVENTS)
    if content_type != "application/x-www-form-urlencoded":
        raise Unreadable(f"a body of type {content_type[:60]!r}")
    try:
        fields = dict(parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text)))
    except ValueError:
        raise Unreadable("the form is not url-encoded") from None
    if "payload" in fields:
        return _kept(_json_object(fields["payload"], what="the payload"), _INTERACTIONS)
    if "ssl_check" in fields:
        return _validated(SslCheck, fields)
    if "command" in fields:
        return _validated(SlashCommand, fields)
    raise Unreadable("neither a command nor an interaction")


def _json_object(text: str, *, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise Unreadable(f"{what} is not JSON") from None
    except RecursionError:
        raise Unreadable(f"{what} is nested too deep") from None
    if not isinstance(value, dict):
        raise Unreadable(f"{what} is not a JSON object")
    return value


def _kept(body: dict[str, Any], models: Mapping[str, type[_Model]]) -> dict[str, Any]:
    kind = body.get("type")
    model = models.get(kind) if isinstance(kind, str) else None
    if model is None:
        shown = kind[:40] if isinstance(kind, str) else type(kind).__name__
        raise Unreadable(f"clonebot takes no request of type {shown!r}")
    return _validated(model, body)


def _validated(model: type[_Model], data: Mapping[str, Any]) -> dict[str, Any]:
    return _check(model, data).model_dump(mode="json", exclude_none=True)


M = TypeVar("M", bound=_Model)


def _check(model: type[M], data: Mapping[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Unreadable(_first_problem(exc)) from None


def _first_problem(exc: ValidationError) -> str:
    """``user.id: String should match pattern …``: where, and what; never the value sent."""
    error = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "the payload"
    return f"{where[:80]}: {error['msg'][:80]}"


# -- what listeners read ---------------------------------------------------------------------


def read_command(body: Mapping[str, Any]) -> SlashCommand:
    return _check(SlashCommand, body)


def read_click(body: Mapping[str, Any]) -> tuple[BlockActions, ids.Target]:
    """A click on a button of ours, and the environments its value names."""
    click = _check(BlockActions, body)
    try:
        target = ids.decode_target(click.actions[0].value or "")
        for name in (target.env, target.other):
            if name is not None:
                validate_name(name)
    except (ValueError, InvalidName):
        raise Unreadable("this button names no environment of clonebot's") from None
    return click, target


def read_extend(body: Mapping[str, Any]) -> tuple[BlockActions, str, str]:
    """A click on an *Extend* button: the click, the environment, the duration it adds."""
    click = _check(BlockActions, body)
    try:
        env, by = ids.decode_extend(click.actions[0].value or "")
        validate_name(env)
        parse_duration(by)
    except (ValueError, InvalidName, BadRequest):
        raise Unreadable("this button names no environment of clonebot's") from None
    return click, env, by


_APPROVAL = re.compile(r"[0-9a-f]{8}")


def read_approval_click(body: Mapping[str, Any]) -> tuple[BlockActions, str, bool]:
    """A click on *Approve* or *Reject*: the click, the approval's id, whether approved."""
    click = _check(BlockActions, body)
    action = click.actions[0]
    if action.action_id not in (ids.APPROVE, ids.REJECT):
        raise Unreadable("this button is no approval of clonebot's")
    if not _APPROVAL.fullmatch(action.value or ""):
        raise Unreadable("this button names no approval of clonebot's")
    return click, action.value or "", action.action_id == ids.APPROVE


def read_submission(body: Mapping[str, Any]) -> ViewSubmission:
    return _check(ViewSubmission, body)


class FormMetadata(_Model):
    """What a form of ours was opened with (``private_metadata``)."""

    channel: ChannelId | None = None  # where it was asked for
    source: Short | None = None  # the clone form's first source and its default name
    default: Short | None = None
    env: Short | None = None  # the split form's environment


def read_view(view: Mapping[str, Any]) -> View:
    return _check(View, view)


def read_metadata(view: View) -> FormMetadata:
    if not view.private_metadata:
        return FormMetadata()
    return _check(FormMetadata, _json_object(view.private_metadata, what="the form's metadata"))


def read_event(body: Mapping[str, Any]) -> Event:
    return _check(Event, body)

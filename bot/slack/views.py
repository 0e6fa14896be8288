"""Slack views: the clone and split modals, what their submissions say, and the App Home tab.

Every input's block_id and action_id are the same id from ``bot.slack.ids``, so a submission
is read, and an error shown, by that one id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from slack_sdk.models.blocks import (
    Block,
    CheckboxesElement,
    ConversationFilter,
    ConversationSelectElement,
    DividerBlock,
    HeaderBlock,
    InputBlock,
    InputInteractiveElement,
    NumberInputElement,
    Option,
    PlainTextInputElement,
    RadioButtonsElement,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from bot.slack import ids
from bot.slack.messages import (
    RUNNING,
    clip,
    context_block,
    env_url,
    fit,
    job_title,
    lifetime,
)
from bot.slack.payloads import InputValue, Unreadable, read_metadata, read_view
from services.durations import parse_duration
from services.errors import BadRequest
from storage.models import Job

OPTIONS_LIMIT = 100  # options of one select menu
OPTION_VALUE_LIMIT = 150
HOME_ENVIRONMENTS = 40  # two blocks each, within the Home tab's 100
SplitMode = Literal["split", "primary", "backup"]
_MODES: dict[str, SplitMode] = {mode: mode for mode in get_args(SplitMode)}


class FieldError(ValueError):
    """A submitted field Slack's own checks let through but we cannot use."""

    def __init__(self, block_id: str, message: str) -> None:
        super().__init__(message)
        self.block_id, self.message = block_id, message


@dataclass(frozen=True)
class CloneForm:
    source: str
    name: str | None  # None: the source's default clone name
    snapshot: bool
    notify: str | None  # the channel to notify, if one was chosen
    channel: str | None  # where /clone was typed
    ttl: str | None = None  # how long it lives, as typed; None: the default


@dataclass(frozen=True)
class SplitForm:
    env: str
    other: str
    domain: str
    weight: int  # env's share of a split, 0..100
    sticky: bool
    mode: SplitMode  # a split, or a failover with env as primary or as backup
    channel: str | None = None  # where the button was clicked

    @property
    def weights(self) -> dict[str, int]:
        return {self.env: self.weight, self.other: 100 - self.weight}

    @property
    def primary(self) -> str:
        return self.other if self.mode == "backup" else self.env

    @property
    def backup(self) -> str:
        return self.env if self.mode == "backup" else self.other


CLONE_TITLE = "Clone an environment"
SPLIT_TITLE = "Split traffic"


def clone_modal(sources: Sequence[str], *, default_name: str, channel: str | None) -> View:
    """The /clone form; ``sources`` are the environments the user may clone, the likeliest
    first, and ``default_name`` the default clone name of the first."""
    if not sources:
        return notice_modal(
            CLONE_TITLE,
            "You may clone no environment: only its owner or an admin may clone it. "
            "`/env list` shows the environments you may see.",
        )
    options = [Option(value=s, text=s) for s in sources[:OPTIONS_LIMIT]]
    more = len(sources) - len(options)
    blocks: list[Block] = [
        _input(
            "Source",
            StaticSelectElement(
                action_id=ids.CLONE_SOURCE, options=options, initial_option=options[0]
            ),
            hint=f"{more} more are not listed: type /clone SOURCE NAME" if more else None,
        ),
        _input(
            "Name of the clone",
            PlainTextInputElement(
                action_id=ids.CLONE_NAME, initial_value=default_name, max_length=63
            ),
            hint="Lowercase letters, digits and hyphens, starting with a letter",
        ),
        _input(
            "Expires after",
            PlainTextInputElement(action_id=ids.CLONE_TTL, max_length=16),
            hint="Like 3d, 12h or 2w; never (its source's owner, admins); empty: the default",
            optional=True,
        ),
        _input(
            "Options",
            CheckboxesElement(
                action_id=ids.CLONE_OPTIONS,
                options=[_option(ids.SNAPSHOT, "Snapshot", "Create, don't start")],
            ),
            optional=True,
        ),
        _input(
            "Channel to notify",
            ConversationSelectElement(
                action_id=ids.CLONE_NOTIFY,
                filter=ConversationFilter(include=["public", "private"], exclude_bot_users=True),
            ),
            hint="Where the team hears about this clone; empty for the default channel",
            optional=True,
        ),
    ]
    return View(
        type="modal", callback_id=ids.CLONE_MODAL, title=CLONE_TITLE,
        submit="Clone", close="Cancel", blocks=blocks,
        private_metadata=json.dumps(
            {"channel": channel, "source": sources[0], "default": default_name}
        ),
    )  # fmt: skip


def split_modal(
    env: str, *, others: Sequence[str], domains: Sequence[str], channel: str | None = None
) -> View:
    """The *Split traffic…* form for ``env``: ``others`` are the environments to share with
    (the likeliest first), ``domains`` those bound to ``env`` or to one of them; ``channel``
    is where the form was asked for, as the permission check needs it."""
    # Slack refuses an option value over 150 characters; such a domain is left to /env split
    usable = [d for d in domains if len(d) <= OPTION_VALUE_LIMIT][:OPTIONS_LIMIT]
    if not usable or not others:
        return notice_modal(
            SPLIT_TITLE,
            f"A split needs a custom domain and another environment. Bind a domain with "
            f"`/env domain add {env} DOMAIN`.",
        )
    domain_options = [Option(value=d, text=clip(d, 75)) for d in usable]
    other_options = [Option(value=o, text=o) for o in others[:OPTIONS_LIMIT]]
    modes = [
        _option("split", "Split by weight", "Both serve, by the share above"),
        _option("backup", "Failover to this environment", "The other serves; this one if it fails"),
        _option("primary", "Failover from this one", "This one serves; the other if it fails"),
    ]
    blocks: list[Block] = [
        SectionBlock(text=f"Send a domain's traffic to *{env}* and another environment."),
        _input(
            "Domain",
            StaticSelectElement(
                action_id=ids.SPLIT_DOMAIN,
                options=domain_options,
                initial_option=domain_options[0],
            ),
        ),
        _input(
            "Other environment",
            StaticSelectElement(
                action_id=ids.SPLIT_OTHER, options=other_options, initial_option=other_options[0]
            ),
        ),
        _input(
            f"Share of {env} (%)",
            NumberInputElement(
                action_id=ids.SPLIT_WEIGHT,
                is_decimal_allowed=False,
                min_value="0",
                max_value="100",
                initial_value="10",
            ),
            hint=f"The other environment gets the rest; 100 sends all traffic to {env}",
        ),
        _input(
            "Visitors",
            CheckboxesElement(
                action_id=ids.SPLIT_STICKY,
                options=[_option(ids.STICKY, "Sticky", "Each stays on one side")],
            ),
            optional=True,
        ),
        _input(
            "Mode",
            RadioButtonsElement(action_id=ids.SPLIT_MODE, options=modes, initial_option=modes[0]),
        ),
    ]
    return View(
        type="modal", callback_id=ids.SPLIT_MODAL, title=SPLIT_TITLE, submit="Apply",
        close="Cancel", blocks=blocks,
        private_metadata=json.dumps({"env": env, "channel": channel}),
    )  # fmt: skip


def read_clone_modal(view: Mapping[str, Any]) -> CloneForm:
    """The clone form of a ``view_submission``'s ``view``; ``FieldError`` for a field not
    filled in as the form asks, ``Unreadable`` for a view that is not our form's shape."""
    checked = read_view(view)
    values = checked.state.values
    field = _field(values, ids.CLONE_NAME)
    typed = ((field.value if field else None) or "").strip()
    if not typed:
        raise FieldError(ids.CLONE_NAME, "Give the clone a name.")
    asked = read_metadata(checked)
    source = _selected(values, ids.CLONE_SOURCE)
    # the name filled in was the first source's default: another source has its own
    name = None if typed == asked.default and source != asked.source else typed
    notify = _field(values, ids.CLONE_NOTIFY)
    ttl_field = _field(values, ids.CLONE_TTL)
    ttl = ((ttl_field.value if ttl_field else None) or "").strip() or None
    if ttl is not None:
        try:
            parse_duration(ttl, what="An expiry")
        except BadRequest as exc:
            raise FieldError(ids.CLONE_TTL, exc.message) from None
    return CloneForm(
        source=source,
        name=name,
        snapshot=ids.SNAPSHOT in _checked(values, ids.CLONE_OPTIONS),
        notify=notify.selected_conversation if notify else None,
        channel=asked.channel,
        ttl=ttl,
    )


def read_split_modal(view: Mapping[str, Any]) -> SplitForm:
    """The split form of a ``view_submission``'s ``view``; ``FieldError`` and ``Unreadable``
    as above."""
    checked = read_view(view)
    values = checked.state.values
    weight_field = _field(values, ids.SPLIT_WEIGHT)
    weight_text = (weight_field.value if weight_field else None) or ""
    weight = int(weight_text) if weight_text.isascii() and weight_text.isdigit() else -1
    if not 0 <= weight <= 100:
        raise FieldError(ids.SPLIT_WEIGHT, "A whole number from 0 to 100.")
    mode = _MODES.get(_selected(values, ids.SPLIT_MODE))
    if mode is None:
        raise FieldError(ids.SPLIT_MODE, "Choose a mode.")
    asked = read_metadata(checked)
    if not asked.env:
        raise Unreadable("the form does not say which environment it is about")
    return SplitForm(
        env=asked.env,
        channel=asked.channel,
        other=_selected(values, ids.SPLIT_OTHER),
        domain=_selected(values, ids.SPLIT_DOMAIN),
        weight=weight,
        sticky=ids.STICKY in _checked(values, ids.SPLIT_STICKY),
        mode=mode,
    )


def field_errors(**by_block_id: str) -> dict[str, Any]:
    """The answer to a submission that shows each message under its field, keeping the modal
    open: ``ack(**field_errors(clone_name="taken"))``."""
    return {"response_action": "errors", "errors": dict(by_block_id)}


@dataclass(frozen=True)
class EnvironmentSummary:
    """An environment as the Home tab shows it."""

    name: str
    owner: str | None
    role: str  # what the user is to it: "owner", "admin", "operator" or "viewer"
    layers: Mapping[str, int]  # layer name -> its number of nodes
    cloned_from: str | None = None
    down: bool = False  # recorded, with no container
    expires_at: datetime | None = None
    stopped: str | None = None  # why clonebot stopped it, if it did
    engine: str | None = None  # shown when there are several
    unreachable: str | None = None  # why its engine does not answer, when it does not


@dataclass(frozen=True)
class RouteSummary:
    """A domain's route, by environment name."""

    domain: str
    kind: str  # "split" or "failover"
    primary: str
    secondary: str
    weight: int = 100  # the primary's share of a split
    sticky: bool = False

    def describe(self) -> str:
        if self.kind == "failover":
            return f"{self.domain}: *{self.primary}*, failing over to *{self.secondary}*"
        how = " (sticky)" if self.sticky else ""
        return (
            f"{self.domain}: *{self.primary}* {self.weight} %, "
            f"*{self.secondary}* {100 - self.weight} %{how}"
        )


def home_view(
    *,
    user: str,
    environments: Sequence[EnvironmentSummary],
    domains: Mapping[str, Sequence[str]],
    routes: Sequence[RouteSummary],
    jobs: Sequence[Job],
    base_domain: str,
    port: int = 80,
) -> View:
    """The App Home tab: ``environments`` the user may see, ``domains`` bound to each (by
    environment name), the ``routes`` between them, the user's ``jobs`` in progress."""
    blocks: list[Block] = [HeaderBlock(text="Your environments")]
    if not environments:
        blocks.append(
            SectionBlock(
                text="You have no environment yet. Clone one with `/clone SOURCE NAME`, "
                "or type `/clone` for a form; `/env help` lists everything else."
            )
        )
    for env in environments[:HOME_ENVIRONMENTS]:
        env_routes = [r for r in routes if env.name in (r.primary, r.secondary)]
        text = _home_environment(
            env, user=user, domains=domains.get(env.name, ()), routes=env_routes,
            base_domain=base_domain, port=port,
        )  # fmt: skip
        blocks += [SectionBlock(text=text), DividerBlock()]
    if len(environments) > HOME_ENVIRONMENTS:
        more = len(environments) - HOME_ENVIRONMENTS
        blocks.append(context_block(f"… and {more} more: `/env list` shows them all"))
    blocks.append(HeaderBlock(text="Jobs in progress"))
    lines = [f"{RUNNING} {job_title(job)} · {job.step or job.state}" for job in jobs]
    blocks.append(SectionBlock(text=fit(lines)) if lines else context_block("No job is running."))
    return View(type="home", blocks=blocks)


def _home_environment(
    env: EnvironmentSummary,
    *,
    user: str,
    domains: Sequence[str],
    routes: Sequence[RouteSummary],
    base_domain: str,
    port: int,
) -> str:
    if env.owner is None:
        whose = "nobody owns it yet (an admin may adopt it)"
    else:
        whose = "yours" if env.owner == user else f"<@{env.owner}>'s, you are {env.role}"
    origin = f" · cloned from *{env.cloned_from}*" if env.cloned_from else ""
    nodes = ", ".join(f"{layer} ×{count}" for layer, count in env.layers.items())
    url = f"<{env_url(env.name, base_domain=base_domain, port=port)}|{env.name}.{base_domain}>"
    state = "*down*: no container; its record, domains and routes are kept" if env.down else ""
    if env.unreachable:
        state = f"*unreachable*: engine {env.engine} does not answer"
    life = lifetime(expires_at=env.expires_at, stopped=env.stopped, clone=bool(env.cloned_from))
    where = f" · on {env.engine}" if env.engine else ""
    lines = [f"*{env.name}* · {whose}{origin}{where}{life}", state or nodes or "no nodes", url]
    if domains:
        lines.append(clip("Domains: " + ", ".join(domains), 1000))
    return fit(lines + [f"↪ {route.describe()}" for route in routes])


def loading_modal(title: str) -> View:
    """A form opened before its content is read: Slack's trigger lasts 3 s, which reading the
    engine and the database may take under load; ``views.update`` then fills it."""
    return notice_modal(title, ":hourglass_flowing_sand: Looking this up…")


def notice_modal(title: str, text: str) -> View:
    """A modal that only explains why there is nothing to fill in."""
    return View(type="modal", title=title, close="Close", blocks=[SectionBlock(text=text)])


def _input(
    label: str, element: InputInteractiveElement, *, hint: str | None = None, optional: bool = False
) -> InputBlock:
    """An input block whose block_id is its element's action_id."""
    block_id = element.action_id
    return InputBlock(block_id=block_id, label=label, element=element, hint=hint, optional=optional)


def _option(value: str, text: str, description: str) -> Option:
    return Option(value=value, text=text, description=description)


def _field(values: Mapping[str, Mapping[str, InputValue]], block_id: str) -> InputValue | None:
    return (values.get(block_id) or {}).get(block_id)


def _selected(values: Mapping[str, Mapping[str, InputValue]], block_id: str) -> str:
    field = _field(values, block_id)
    option = field.selected_option if field else None
    if option is None or not option.value:
        raise FieldError(block_id, "Choose one.")
    return option.value


def _checked(values: Mapping[str, Mapping[str, InputValue]], block_id: str) -> set[str]:
    field = _field(values, block_id)
    return {o.value for o in (field.selected_options or [])} if field else set()

"""Who may do what: the one place that allows or refuses an action, with a reason people read."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Action(StrEnum):
    VIEW = "view"
    CLONE = "clone"
    REFRESH = "refresh"
    DELETE = "delete"
    RENAME = "rename"
    SHARE = "share"
    HAND_OVER = "hand over"
    BIND_CHANNEL = "bind channel"
    NOTIFY = "set notify channel"
    MOVE_TRAFFIC = "move traffic"
    ADOPT = "adopt"
    FORGET = "forget"  # free a down environment's name, its record gone
    SLEEP = "sleep or wake"  # stop a clone, or start it again
    EXTEND = "extend"  # put a clone's expiry later
    PROTECT = "protect"  # make its changes need a second person's approval


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.VIEWER: frozenset({Action.VIEW}),
    # who works on a clone day to day: its traffic, waking it, keeping it longer
    Role.OPERATOR: frozenset({Action.VIEW, Action.MOVE_TRAFFIC, Action.SLEEP, Action.EXTEND}),
}


@dataclass(frozen=True)
class Access:
    """What the database knows of one environment's people and channels."""

    name: str
    owner: str | None
    collaborators: dict[str, Role] = field(default_factory=dict)
    channels: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def decide(
    *, user: str, action: Action, access: Access, channel: str | None, admins: frozenset[str]
) -> Decision:
    """Allow or refuse ``user`` doing ``action`` to an environment, asked from ``channel``.

    ``channel`` is None for the command line, where channel bindings do not apply.
    """
    env = access.name
    if channel is not None and access.channels and channel not in access.channels:
        bound = ", ".join(f"<#{c}>" for c in sorted(access.channels))
        return Decision(False, f"{env} takes commands only in {bound}")
    if user in admins:
        return Decision(True, "admin")
    if action is Action.ADOPT:
        return Decision(False, "only an admin may adopt an environment")
    if action is Action.FORGET:
        return Decision(False, "only an admin may forget an environment")
    if access.owner is None:
        return Decision(False, f"nobody owns {env} yet: an admin must adopt it first")
    if user == access.owner:
        return Decision(True, "owner")
    role = access.collaborators.get(user)
    if role is not None and action in ROLE_ACTIONS[role]:
        return Decision(True, role.value)
    if role is not None:
        return Decision(False, f"as a {role.value} of {env} you may not {action.value} it")
    return Decision(False, f"{env} belongs to <@{access.owner}>; ask them to share it with you")

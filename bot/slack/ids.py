"""The ids Slack sends back with a click or a submission, and what a button's value carries.

Messages and views set them; listeners match on them. A button's value names environments,
never permissions: every click is authorized again for the user who clicked.
"""

from __future__ import annotations

from dataclasses import dataclass

# buttons of a finished job's message (action_id)
SWAP = "swap_domains"
SPLIT = "split_traffic"
OPEN = "open_env"  # a link button: Slack still sends the click, which only needs an ack
DELETE = "delete_clone"
SLEEP = "sleep_env"
WAKE = "wake_env"
APPROVE = "approve_change"  # its value: the approval's id
REJECT = "reject_change"
EXTEND = "extend_env"  # a prefix (extend_env_1d, …): its value names env and duration

# modals (callback_id)
CLONE_MODAL = "clone_modal"
SPLIT_MODAL = "split_modal"

# the clone modal's inputs; each input's block_id and action_id are the same string
CLONE_SOURCE = "clone_source"
CLONE_NAME = "clone_name"
CLONE_OPTIONS = "clone_options"
CLONE_NOTIFY = "clone_notify"
CLONE_TTL = "clone_ttl"
SNAPSHOT = "snapshot"  # the value of the "create without starting" checkbox

# the split modal's inputs
SPLIT_DOMAIN = "split_domain"
SPLIT_OTHER = "split_other"
SPLIT_WEIGHT = "split_weight"
SPLIT_STICKY = "split_sticky"
SPLIT_MODE = "split_mode"
STICKY = "sticky"  # the value of the sticky checkbox

_SEPARATOR = "|"  # environment names are letters, digits and hyphens: never a "|"


@dataclass(frozen=True)
class Target:
    """What a button acts on: an environment and, for a swap or split, the other one."""

    env: str
    other: str | None = None


def encode_target(target: Target) -> str:
    """``"dev-copy|prod"``, or ``"dev-copy"`` without another environment."""
    return _SEPARATOR.join(n for n in (target.env, target.other) if n)


def decode_target(value: str) -> Target:
    """The target a button's value names; ``ValueError`` for a value no message of ours has."""
    names = value.split(_SEPARATOR)
    if not 1 <= len(names) <= 2 or not all(names):
        raise ValueError(f"not a button value of clonebot: {value!r}")
    return Target(names[0], names[1] if len(names) == 2 else None)


def encode_extend(env: str, by: str) -> str:
    """An *Extend* button's value: ``"dev-copy|1d"``."""
    return f"{env}{_SEPARATOR}{by}"


def decode_extend(value: str) -> tuple[str, str]:
    """The environment and the duration an *Extend* button names (checked by the caller)."""
    env, separator, by = value.partition(_SEPARATOR)
    if not separator or not env or not by:
        raise ValueError(f"not an extend button of clonebot: {value!r}")
    return env, by

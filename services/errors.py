"""Errors clonebot raises, each with a message a user can act on.

ClonebotError                 base: ``message`` is what a person reads
├── Refused                   nothing was done; the request itself is wrong
│   ├── InvalidName           not a valid environment name
│   ├── NameTaken             an environment, or what is left of one, holds the name
│   ├── EnvironmentNotFound   no environment of that name
│   ├── NotEnoughDisk         the Docker host lacks space for the copy
│   ├── QuotaExceeded         the user's clones reached CLONEBOT_MAX_* (what to delete named)
│   ├── ApprovalNeeded        a protected environment's change waits for a second person
│   ├── Busy                  another job holds the environment
│   └── NotAClone             an operation meant for clones was asked of a source
├── DockerUnavailable         the Docker engine cannot be reached
├── DockerFailed              the Docker engine refused or failed an operation
├── LeaseLost                 a job that could not keep its lease stopped (and rolled back)
├── AcmeFailed                an ACME server refused or failed an order (nothing was stored)
└── CloneFailed               a clone/refresh failed; what it created was removed
    └── HookFailed            an on-clone hook exited non-zero or ran too long
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.hooks import HookRun


class ClonebotError(Exception):
    """Base of every error clonebot raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Refused(ClonebotError):
    """The request was refused before anything was changed."""


class InvalidName(Refused):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"invalid name {name!r}: {reason}")
        self.name = name
        self.reason = reason


class NameTaken(Refused):
    """``holder`` says what holds the name when it is not a running environment."""

    def __init__(self, name: str, holder: str | None = None) -> None:
        if holder is None:
            super().__init__(f"an environment named {name!r} already exists")
        else:
            super().__init__(f"{name} is taken: {holder}")
        self.name = name
        self.holder = holder


class EnvironmentNotFound(Refused):
    def __init__(self, name: str) -> None:
        super().__init__(f"no environment named {name!r}")
        self.name = name


class NotEnoughDisk(Refused):
    def __init__(self, *, needed: int, free: int, reserved: int = 0) -> None:
        message = (
            f"not enough free disk on the Docker host: the copy needs {_size(needed)}, "
            f"{_size(free)} is free"
        )
        if reserved:
            message += f" and running jobs will still write {_size(reserved)} of it"
        super().__init__(message)
        self.needed = needed
        self.free = free
        self.reserved = reserved


class ApprovalNeeded(Refused):
    """Nothing was done yet: the change waits for approval ``approval`` (asked just now when
    ``new``; else one asked before for the same change is still pending)."""

    def __init__(
        self, *, approval: str, protected: tuple[str, ...], change: str, new: bool
    ) -> None:
        names = ", ".join(protected)
        super().__init__(
            f"{names} {'is' if len(protected) == 1 else 'are'} protected: to {change}, "
            f"someone else with rights on it must approve (approval {approval})"
        )
        self.approval, self.protected, self.change, self.new = approval, protected, change, new


class QuotaExceeded(Refused):
    """A user's clones reached a limit; ``message`` says what is used and what to delete."""


def size_text(n: int) -> str:
    """1.5 GiB, 300.0 MiB, 12 B."""
    return _size(n)


class NoNetworkRoom(Refused):
    def __init__(self, *, wanted: int, free: int, total: int) -> None:
        super().__init__(
            f"the Docker engine cannot make the clone's {wanted} network(s): its address pools "
            f"have room for {free} more of {total}; delete unused environments or give the "
            "engine more (default-address-pools: see `clonebot doctor`)"
        )
        self.wanted = wanted
        self.free = free


class Busy(Refused):
    """Another job holds the environment (``prod is busy: rename, job 5c8e…, 12 s``)."""

    def __init__(self, name: str, *, kind: str, job: str, age_s: int, gone: bool = False) -> None:
        message = f"{name} is busy: {kind}, job {job[:4]}…, {age_s} s"
        if gone:
            message += "; its process is gone: `clonebot recover` frees it"
        super().__init__(message)
        self.name = name
        self.job = job


class NotAClone(Refused):
    def __init__(self, name: str, action: str) -> None:
        super().__init__(f"{name!r} is not a clone made by clonebot; {action} only works on clones")
        self.name = name


class InvalidUser(Refused):
    def __init__(self, user: str) -> None:
        super().__init__(f"{user!r} is not a Slack user ID (like U012AB3CD)")
        self.user = user


class BadRequest(Refused):
    """A malformed request; the message names the problem."""


class Forbidden(Refused):
    """The permission check refused; ``message`` is its reason."""


class DockerUnavailable(ClonebotError):
    """The Docker engine could not be reached at all."""


class DockerFailed(ClonebotError):
    """The Docker engine answered an operation with an error."""

    def __init__(self, message: str, *, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class FreezeTimeout(ClonebotError):
    """The final pass outlasted CLONEBOT_FREEZE_TIMEOUT; the source was resumed."""


class AcmeFailed(ClonebotError):
    """An ACME server refused a certificate or could not be reached; ``message`` says what it
    said (never a key)."""


class LeaseLost(ClonebotError):
    """The job could not renew its lease, so it stopped before another process recovers it."""


class CloneFailed(ClonebotError):
    """A clone or refresh failed at ``step``; everything it created was removed."""

    def __init__(self, *, step: str, cause: str) -> None:
        super().__init__(f"{step} failed: {cause}; everything the job created was removed")
        self.step = step
        self.cause = cause


class HookFailed(CloneFailed):
    """An on-clone hook failed; ``runs`` are the hooks run so far, the failed one last, their
    output's last lines masked (``services/hooks.py``)."""

    def __init__(self, *, summary: str, runs: list[HookRun]) -> None:
        super().__init__(step="hooks", cause=summary)
        self.runs = runs


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    raise AssertionError("unreachable")

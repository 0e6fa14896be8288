"""Durations and sizes as people type them: ``3d``, ``90m``, ``never``; ``20G``.

One grammar everywhere (``--ttl``, ``/env extend``, the settings): a duration is
``<int>[smhdw]`` (a bare integer is seconds) or ``never``; a size is ``<int>[KMGT]`` (binary
units: ``1G`` is 1024³ bytes; a bare integer is bytes).
"""

from __future__ import annotations

import re
from datetime import timedelta

from services.errors import BadRequest

NEVER = "never"
_DURATION = re.compile(r"(\d{1,9})([smhdw]?)")
_SIZE = re.compile(r"(\d{1,15})([KMGT]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BYTES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# what timedelta holds (999,999,999 days), with room for a date to be added to it
_LONGEST = timedelta(days=100 * 365)


def parse_duration(text: str, *, what: str = "a duration") -> timedelta | None:
    """``3d`` → 3 days; ``never`` → None. ``BadRequest`` naming ``what`` for anything else."""
    word = text.strip().lower()
    if word == NEVER:
        return None
    match = _DURATION.fullmatch(word)
    if match is None:
        raise BadRequest(
            f"{what} is a whole number with s, m, h, d or w (like 3d or 12h), or never; "
            f"not {text[:40]!r}"
        )
    value = timedelta(seconds=int(match.group(1)) * _SECONDS[match.group(2)])
    if value > _LONGEST:
        raise BadRequest(f"{what} {text!r} is longer than 100 years: say never")
    if not value:
        raise BadRequest(f"{what} must be longer than 0")
    return value


def parse_size(text: str, *, what: str = "a size") -> int:
    """``20G`` → bytes. ``BadRequest`` naming ``what`` for anything else."""
    match = _SIZE.fullmatch(text.strip().upper().removesuffix("B") or text)
    if match is None:
        raise BadRequest(
            f"{what} is a whole number with K, M, G or T (like 20G); not {text[:40]!r}"
        )
    return int(match.group(1)) * _BYTES[match.group(2)]


def describe_duration(value: timedelta | None) -> str:
    """The shortest exact spelling: ``3d``, ``90m``, ``never``."""
    if value is None:
        return NEVER
    seconds = int(value.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _SECONDS[unit] == 0:
            return f"{seconds // _SECONDS[unit]}{unit}"
    return f"{seconds}s"


def describe_left(value: timedelta) -> str:
    """Roughly how long is left, for people: ``2 days``, ``5 hours``, ``12 minutes``."""
    seconds = max(0, int(value.total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"

"""clonebot's own CPU priority: a swap must find a CPU at once, whatever traffic HAProxy moves.

Under load HAProxy (and whatever else serves the traffic) keeps every core busy; a swap is a
few milliseconds of CPU, but at the same priority each of its steps waits its turn behind that
traffic, and its p99 followed the load. `serve` runs at ``CLONEBOT_NICE`` (lower is sooner),
and the HAProxy it starts runs at the priority clonebot was started with: the traffic keeps
its share, and clonebot, idle nearly always, gets a CPU when it asks.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
_started_at: int | None = None  # the niceness clonebot was started with, once it changed it


def take_priority(nice: int) -> bool:
    """Run every thread of this process at niceness ``nice`` when it is below the present
    one and the process may (root, or CAP_SYS_NICE); else say why and run on as started.
    Whether it runs at ``nice`` now."""
    global _started_at
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice >= current:
        return nice == current
    try:
        # on Linux a niceness belongs to a thread: threads made later inherit it
        for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except ProcessLookupError:  # ended meanwhile
                continue
    except PermissionError:
        log.warning(
            "clonebot runs at niceness %d: CLONEBOT_NICE=%d needs root or CAP_SYS_NICE; "
            "under load a swap waits for a CPU behind the traffic",
            current,
            nice,
        )
        return False
    if _started_at is None:
        _started_at = current
    return True


def started_niceness() -> int:
    """The niceness clonebot was started with: what its children run at."""
    return _started_at if _started_at is not None else os.getpriority(os.PRIO_PROCESS, 0)


def as_started() -> None:
    """In a child process before it runs (``preexec_fn``): back to the niceness clonebot was
    started with, so that what it starts (HAProxy) does not share its priority."""
    if _started_at is not None:
        os.setpriority(os.PRIO_PROCESS, 0, _started_at)

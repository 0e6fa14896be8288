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
from collections.abc import Sequence

log = logging.getLogger(__name__)
_started_at: int | None = None  # the niceness clonebot was started with, once it changed it


def take_priority(nice: int) -> bool:
    """Run every thread of this process at niceness ``nice`` when it is below the present
    one and the process may (root, CAP_SYS_NICE or RLIMIT_NICE); else say why and run on as
    started. Whether it runs at ``nice`` now."""
    global _started_at
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice >= current:
        return nice == current
    try:
        # on Linux a niceness belongs to a thread: threads made later inherit it
        threads = sorted(int(t) for t in os.listdir("/proc/self/task"))
    except FileNotFoundError:  # no /proc: the calling thread, which runs the event loop
        threads = [0]
    try:
        for tid in threads:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except ProcessLookupError:  # ended meanwhile
                continue
    except PermissionError:
        log.warning(
            "clonebot runs at niceness %d: CLONEBOT_NICE=%d needs root, CAP_SYS_NICE or "
            "RLIMIT_NICE; under load a swap waits for a CPU behind the traffic",
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


def as_started(argv: Sequence[str]) -> list[str]:
    """``argv`` to run at the niceness clonebot was started with, so that what it starts
    (HAProxy) does not share its priority: through ``nice``, which execs it (the same pid;
    raising a niceness needs no privilege), when clonebot changed its own."""
    if _started_at is None:
        return list(argv)
    return ["nice", "-n", str(_started_at - os.getpriority(os.PRIO_PROCESS, 0)), *argv]

"""Who runs a job: this process's identity, and whether another's is still alive."""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot: tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def this_worker() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def worker_is_gone(worker: str | None, *, lease_until: datetime | None, now: datetime) -> bool:
    """True when the process that claimed a job can no longer be running it.

    On this host that is certain (the process is gone); elsewhere its lease must lapse.
    """
    if not worker:
        return True
    host, _, rest = worker.partition(":")
    pid, _, ticks = rest.partition(":")
    if host == socket.gethostname() and pid.isdigit():
        return _start_ticks(int(pid)) != ticks
    return lease_until is None or lease_until < now

"""One clone in a process of its own, for the memory figure: ``python -m bench.child SRC NAME
[--from ENGINE --on ENGINE]`` (engines of ``CLONEBOT_ENGINES``; the default is DOCKER_HOST's).

Prints one JSON line: the clone's wall time, its pre-copy step's time (from the StepStarted and
StepDone events) and this process's resident memory (kB, from ``/proc/self/status``) once
everything is imported, and at its peak during the clone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

from bench.harness import clonebot_settings, timed_clone
from services.fleet import LOCAL, Fleet
from services.progress import Event, StepDone, StepStarted

STATUS = Path("/proc/self/status")


def main() -> None:
    source, name, *rest = sys.argv[1:]
    engines = dict(zip(rest[::2], rest[1::2], strict=True))
    rss_kb = _reset_peak()
    figures = asyncio.run(
        _clone(source=source, name=name, origin=engines.get("--from"), on=engines.get("--on"))
    )
    print(json.dumps({**figures, "rss_kb": rss_kb, "peak_kb": _status_kb("VmHWM")}))


async def _clone(*, source: str, name: str, origin: str | None, on: str | None) -> dict[str, float]:
    marks: dict[str, float] = {}

    def emit(event: Event) -> None:
        if isinstance(event, StepStarted | StepDone) and event.step == "pre-copy":
            marks[type(event).__name__] = time.perf_counter()

    settings = clonebot_settings()
    fleet = Fleet(settings.engine_specs())
    try:
        result, elapsed = await timed_clone(
            fleet.client(origin or LOCAL), settings, source=source, name=name, emit=emit,
            target=fleet.client(on or origin or LOCAL),
        )  # fmt: skip
    finally:
        await fleet.close()
    pre_copy = marks["StepDone"] - marks["StepStarted"]
    return {"clone_s": elapsed, "pre_copy_s": pre_copy, "freeze_ms": result.freeze_ms}


def _reset_peak() -> int:
    """The resident size now, after resetting the peak to it (Linux: clear_refs 5)."""
    # if that fails, the peak also counts the imports: the growth is over-, never underrated
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS")


def _status_kb(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is not in {STATUS}")


if __name__ == "__main__":
    main()

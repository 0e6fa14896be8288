"""Progress of a job as a stream of typed events, consumed by the CLI, Slack and the job record."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class StepStarted:
    step: str
    node: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class BytesCopied:
    step: str
    node: str | None
    copied: int
    total: int


@dataclass(frozen=True)
class StepDone:
    step: str
    node: str | None
    elapsed_ms: int


@dataclass(frozen=True)
class Warned:
    message: str


Event = StepStarted | BytesCopied | StepDone | Warned
EventSink = Callable[[Event], None]


def ignore_events(event: Event) -> None:
    """An event sink that drops everything."""


@asynccontextmanager
async def step(emit: EventSink, name: str, node: str | None = None) -> AsyncIterator[None]:
    """Emit StepStarted, then StepDone when the block finishes without error."""
    emit(StepStarted(name, node))
    started = time.monotonic()
    yield
    emit(StepDone(name, node, int((time.monotonic() - started) * 1000)))

"""A live Rich view of a job's progress events: one row per node, bytes and rate for copies."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from services.progress import BytesCopied, Event, StepDone, StepStarted, Warned


@dataclass
class _Row:
    step: str
    state: str = "running"
    copied: int = 0  # the copy's figures stay on the row through the node's later steps
    total: int = 0
    copy_started: float = 0.0
    copy_seconds: float = 0.0

    def rate(self) -> float:
        seconds = self.copy_seconds or (time.monotonic() - self.copy_started)
        return self.copied / max(seconds, 1e-3)


class ProgressView:
    """Consumes events (as an event sink) and redraws a table while the job runs."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._rows: dict[str, _Row] = {}
        self._started = time.monotonic()
        # shown from the first event on, so that a refusal prints no empty table
        self._live: Live | None = None

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)

    def __call__(self, event: Event) -> None:
        match event:
            case StepStarted(step=step, node=node):
                row = self._rows.setdefault(node or step, _Row(step))
                row.step, row.state = step, "running"
                if step == "pre-copy":
                    row.copy_started = time.monotonic()
            case BytesCopied(node=node, copied=copied, total=total, step=step):
                row = self._rows.setdefault(node or step, _Row(step))
                row.copied, row.total = copied, total
            case StepDone(step=step, node=node):
                row = self._rows.setdefault(node or step, _Row(step))
                row.state = "done"
                if step == "pre-copy":
                    row.copy_seconds = time.monotonic() - row.copy_started
            case Warned(message=message):
                self._console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)
        if self._live is None:
            self._live = Live(self._render(), console=self._console, refresh_per_second=8)
            self._live.__enter__()
        self._live.update(self._render())

    def _render(self) -> RenderableType:
        table = Table(
            title=f"elapsed {time.monotonic() - self._started:.1f} s", title_justify="left"
        )
        for column in ("node", "step", "state", "copied", "rate"):
            table.add_column(column)
        for node, row in self._rows.items():
            copied = rate = ""
            if row.total or row.copied:
                # du counts directory blocks too: never show more than the total
                copied = f"{human(min(row.copied, row.total or row.copied))} / {human(row.total)}"
                rate = f"{human(int(row.rate()))}/s"
            state = "[green]done[/]" if row.state == "done" else "[cyan]…[/]"
            table.add_row(node, row.step, state, copied, rate)
        return table


def human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"

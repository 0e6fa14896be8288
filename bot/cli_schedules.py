"""Commands about scheduled refreshes: set, remove or show a clone's; list them all."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from bot.cli_common import AsUser, JsonFlag, err, out, run
from services.access import Request
from services.context import Services
from services.schedules import (
    Schedule,
    get_schedule,
    list_schedules,
    remove_schedule,
    set_schedule,
)

commands = typer.Typer()


@commands.command()
def schedule(
    name: Annotated[str, typer.Argument(help="The clone.")],
    what: Annotated[str | None, typer.Argument(help="refresh: what to do on the schedule.")] = None,
    cron: Annotated[
        str | None, typer.Option(help='When, in cron syntax: "0 3 * * *" is 03:00 every day.')
    ] = None,
    tz: Annotated[str, typer.Option(help="The time zone the cron reads (IANA).")] = "UTC",
    off: Annotated[bool, typer.Option("--off", help="Refresh it on no schedule.")] = False,
    user: AsUser = ...,  # type: ignore[assignment]
) -> None:
    """Refresh a clone from its source on a schedule run by ``serve`` (``refresh --cron``),
    remove it (``--off``), or show it (neither)."""
    if off and (what or cron):
        _usage("--off takes no refresh nor --cron")
    if what is not None and (what != "refresh" or cron is None):
        _usage('say `clonebot schedule CLONE refresh --cron "0 3 * * *" --as U`')
    if cron is not None and what is None:
        _usage("--cron needs `refresh` before it")
    request = Request(user)
    if off:
        removed = run(lambda svc: remove_schedule(svc, request, name=name))
        out.print(f"{name}: {'no schedule now' if removed else 'had no schedule'}", highlight=False)
        return

    async def work(svc: Services) -> Schedule | None:
        if cron is None:
            return await get_schedule(svc, request, name=name)
        return await set_schedule(svc, request, name=name, cron=cron, timezone=tz)

    found = run(work)
    if found is None:
        out.print(f"{name} is refreshed on no schedule", highlight=False)
        return
    out.print(f"{name} is refreshed {found.spoken}; next {_when(found.next_run)}", highlight=False)


@commands.command()
def schedules(as_json: JsonFlag = False) -> None:
    """List the clones refreshed on a schedule, the next due first, with how the last went."""
    found = run(list_schedules)
    if as_json:
        print(json.dumps([_json(s) for s in found], indent=2))
        return
    table = Table("clone", "when", "next run", "set by", "last run", "outcome")
    for s in found:
        outcome = s.last_outcome.value if s.last_outcome else ""
        if s.last_reason:
            outcome += f": {s.last_reason}"
        last = _when(s.last_run) if s.last_run else ""
        table.add_row(s.environment, s.spoken, _when(s.next_run), s.set_by, last, outcome)
    out.print(table)


def _usage(message: str) -> None:
    err.print(f"[red]usage:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _json(s: Schedule) -> dict[str, object]:
    return {
        "environment": s.environment, "cron": s.cron, "timezone": s.timezone,
        "set_by": s.set_by, "next_run": s.next_run.isoformat(),
        "last_run": s.last_run.isoformat() if s.last_run else None,
        "last_outcome": s.last_outcome.value if s.last_outcome else None,
        "last_reason": s.last_reason, "last_job": s.last_job,
    }  # fmt: skip

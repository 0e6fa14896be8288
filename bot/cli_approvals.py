"""Commands about protected environments and the approvals their changes wait for."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from bot.cli_common import AsUser, JsonFlag, out, run
from services.access import Request
from services.approvals import decide, describe, pending_approvals, perform, set_protected
from services.context import Services
from services.jobs import run_job
from services.traffic.router import apply_now
from storage.models import Approval, Job

commands = typer.Typer()


@commands.command()
def protect(
    name: Annotated[str, typer.Argument(help="The environment.")],
    user: AsUser = ...,  # type: ignore[assignment]
    off: Annotated[
        bool, typer.Option("--off", help="Take the protection off (itself approved first).")
    ] = False,
) -> None:
    """Protect an environment: its swaps, splits, failovers, deletes, renames, refreshes and
    hand-overs then wait for a second person's approval."""
    run(lambda svc: set_protected(svc, Request(user), name=name, protected=not off))
    out.print(f"{name} is {'no longer ' if off else ''}protected", highlight=False)


@commands.command()
def approvals(as_json: JsonFlag = False) -> None:
    """The changes waiting for approval, oldest first."""
    waiting = run(pending_approvals)
    if as_json:
        print(json.dumps([_approval_json(a) for a in waiting], indent=2))
        return
    table = Table("id", "change", "asked by", "asked at (UTC)", "lapses at (UTC)")
    for a in waiting:
        table.add_row(
            a.id, describe(a.kind, a.args), a.requested_by,
            a.created_at.strftime("%Y-%m-%d %H:%M"), a.expires_at.strftime("%Y-%m-%d %H:%M"),
        )  # fmt: skip
    out.print(table)


@commands.command()
def approve(
    approval: Annotated[str, typer.Argument(help="The approval's id (`clonebot approvals`).")],
    user: AsUser = ...,  # type: ignore[assignment]
) -> None:
    """Approve a change someone else asked for; it is made at once, in their name."""

    async def work(svc: Services) -> tuple[Approval, Job | None]:
        approved = await decide(svc, Request(user), approval_id=approval, approve=True)
        performed = await perform(svc, approved)
        if performed.traffic:
            await apply_now(svc)
        job = await run_job(svc, performed.job.id) if performed.job is not None else None
        return approved, job

    approved, job = run(work)
    change = describe(approved.kind, approved.args)
    if job is not None and job.state != "succeeded":
        out.print(f"approved; {change}: {job.state}: {job.error}", highlight=False)
        raise typer.Exit(1)
    out.print(f"approved and done: {change}", highlight=False)


@commands.command()
def reject(
    approval: Annotated[str, typer.Argument(help="The approval's id (`clonebot approvals`).")],
    user: AsUser = ...,  # type: ignore[assignment]
) -> None:
    """Reject a change someone else asked for: nothing is changed."""
    rejected = run(lambda svc: decide(svc, Request(user), approval_id=approval, approve=False))
    out.print(f"rejected: {describe(rejected.kind, rejected.args)}", highlight=False)


def _approval_json(a: Approval) -> dict[str, object]:
    return {
        "id": a.id,
        "change": describe(a.kind, a.args),
        "kind": a.kind,
        "environments": a.environments,
        "asked_by": a.requested_by,
        "asked_at": a.created_at.isoformat(),
        "lapses_at": a.expires_at.isoformat(),
    }

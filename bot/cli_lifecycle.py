"""Commands about a clone's life: extend its expiry, put it to sleep, wake it."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated

import typer

from bot.cli_common import AsUser, out, run
from services.access import Request
from services.context import Services
from services.expiry import Extended, extend_environment
from services.jobs import run_job, submit_start, submit_stop
from storage.models import Job

commands = typer.Typer()


@commands.command()
def extend(
    name: Annotated[str, typer.Argument(help="The clone.")],
    by: Annotated[str, typer.Argument(help="How much later it expires: 3d, 12h, 2w or never.")],
    user: AsUser = ...,  # type: ignore[assignment]
) -> None:
    """Put a clone's expiry later (from now, if it is past); a clone its expiry stopped is
    started again. ``never`` keeps it for ever: its source's owner or an admin."""

    async def work(svc: Services) -> Extended:
        extended = await extend_environment(svc, Request(user), name=name, by=by)
        if extended.start is not None:
            await run_job(svc, extended.start.id)
        return extended

    extended = run(work)
    until = extended.expires_at.isoformat(" ", "seconds") if extended.expires_at else None
    out.print(f"{name} expires {until}" if until else f"{name} never expires", highlight=False)
    if extended.start is not None:
        out.print(f"{name} was stopped by its expiry: it runs again", highlight=False)


@commands.command()
def sleep(
    name: Annotated[str, typer.Argument(help="The clone to stop.")],
    user: AsUser = ...,  # type: ignore[assignment]
) -> None:
    """Stop a clone until it is woken (its containers, volumes and networks are kept)."""
    job = run(lambda svc: _run(svc, submit_stop(svc, Request(user), name=name)))
    out.print(f"{job.environment} is stopped (job {job.id})", highlight=False)


@commands.command()
def wake(
    name: Annotated[str, typer.Argument(help="The clone to start again.")],
    user: AsUser = ...,  # type: ignore[assignment]
) -> None:
    """Start a stopped clone again."""
    job = run(lambda svc: _run(svc, submit_start(svc, Request(user), name=name)))
    out.print(f"{job.environment} runs again (job {job.id})", highlight=False)


async def _run(svc: Services, submitted: Awaitable[Job]) -> Job:
    job = await submitted
    return await run_job(svc, job.id)

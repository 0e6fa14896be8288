"""Command-line commands about people and records: adopt, share, owner, forget, jobs, audit,
recover, db."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from bot.audit_export import (
    TABLE_ROWS,
    AuditFormat,
    audit_table,
    write_csv,
    write_json,
    write_jsonl,
)
from bot.cli_common import AsUser, JsonFlag, load_settings, out, run
from bot.cli_doctor import start_checks
from bot.logs import configure_logging
from services.access import Request
from services.audit import stream_entries
from services.context import Services
from services.durations import NEVER, parse_duration
from services.errors import BadRequest
from services.ownership import (
    adopt_environment,
    bind_channel,
    forget_environment,
    hand_over_environment,
    share_environment,
)
from services.priority import take_priority
from services.recovery import recover_jobs
from services.supervisor import Tellers
from services.supervisor import serve as supervise
from storage import repositories as repo
from storage.db import upgrade
from storage.models import AuditEntry, Job, utcnow

commands = typer.Typer()

log = logging.getLogger(__name__)
Env = Annotated[str, typer.Argument(help="The environment.")]


@commands.command()
def adopt(
    name: Env,
    owner: Annotated[str, typer.Option("--owner", help="Its new owner (a Slack user ID).")],
    user: AsUser,
) -> None:
    """Give an unowned environment its owner (admins only)."""
    run(lambda svc: adopt_environment(svc, Request(user), name=name, owner=owner))
    out.print(f"{name} is now owned by {owner}")


@commands.command()
def share(
    name: Env,
    collaborator: Annotated[str, typer.Argument(help="Who gets access (a Slack user ID).")],
    role: Annotated[str, typer.Option(help="viewer (sees it) or operator (may move traffic).")],
    user: AsUser,
) -> None:
    """Share an environment with a collaborator."""
    run(lambda svc: share_environment(svc, Request(user), name=name, user=collaborator, role=role))
    out.print(f"{name} is shared with {collaborator} as {role}")


@commands.command()
def owner(
    name: Env,
    new_owner: Annotated[str, typer.Argument(help="The new owner (a Slack user ID).")],
    user: AsUser,
) -> None:
    """Hand an environment over to a new owner."""
    run(lambda svc: hand_over_environment(svc, Request(user), name=name, new_owner=new_owner))
    out.print(f"{name} now belongs to {new_owner}")


@commands.command()
def bind(
    name: Env,
    channel: Annotated[str, typer.Argument(help="A Slack channel ID (C…).")],
    user: AsUser,
) -> None:
    """Accept commands about an environment only from this channel (and others bound)."""
    run(lambda svc: bind_channel(svc, Request(user), name=name, channel=channel))
    out.print(f"{name} now takes commands in {channel}")


@commands.command()
def forget(name: Env, user: AsUser) -> None:
    """Forget an environment that is down (admins only): its record goes, with its owner,
    people, channels, domains and routes, and its name is free unless volumes still hold it."""
    left = run(lambda svc: forget_environment(svc, Request(user), name=name))
    out.print(f"forgot {name}", highlight=False)
    if left:  # its data, maybe: clonebot leaves it to a person
        out.print(f"  what is left of it still holds the name: {', '.join(left)}", highlight=False)


@commands.command()
def jobs(as_json: JsonFlag = False) -> None:
    """The latest jobs: what ran, for whom, how it ended."""

    async def work(svc: Services) -> list[Job]:
        async with svc.sessions() as session:
            return list(await repo.list_jobs(session))

    found = run(work)
    if as_json:
        print(json.dumps([_job_json(j) for j in found], indent=2))
        return
    table = Table("job", "kind", "environment", "state", "step", "requester", "created", "error")
    for j in found:
        created = j.created_at.strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            j.id, j.kind, j.environment, j.state, j.step or "", j.requester, created, j.error or ""
        )
    out.print(table)


@commands.command()
def audit(
    env: Annotated[str | None, typer.Option("--env", help="Only this environment.")] = None,
    since: Annotated[
        str, typer.Option(help="Only entries this recent: 7d, 12h, 90m… or never (everything).")
    ] = NEVER,
    how: Annotated[
        AuditFormat | None,
        typer.Option("--format", help="table for people; json, jsonl or csv to export all."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The same as --format json.")] = False,
) -> None:
    """The audit log: every action taken and every refusal, newest first."""

    async def work(svc: Services) -> None:
        chosen = _audit_format(how, as_json=as_json)
        window = parse_duration(since, what="--since")
        cutoff = None if window is None else utcnow() - window
        if chosen is AuditFormat.TABLE:
            await _print_audit_table(svc, environment=env, since=cutoff)
            return
        entries = stream_entries(svc, environment=env, since=cutoff)
        await _AUDIT_WRITERS[chosen](entries, to=sys.stdout)

    run(work)


_AUDIT_WRITERS = {
    AuditFormat.JSON: write_json,
    AuditFormat.JSONL: write_jsonl,
    AuditFormat.CSV: write_csv,
}


def _audit_format(how: AuditFormat | None, *, as_json: bool) -> AuditFormat:
    if as_json and how not in (None, AuditFormat.JSON):
        raise BadRequest(f"--json is --format json: give one of --json and --format {how}")
    return AuditFormat.JSON if as_json else how or AuditFormat.TABLE


async def _print_audit_table(
    svc: Services, *, environment: str | None, since: datetime | None
) -> None:
    shown: list[AuditEntry] = []
    async for entry in stream_entries(
        svc, environment=environment, since=since, page=TABLE_ROWS + 1
    ):
        shown.append(entry)
        if len(shown) > TABLE_ROWS:
            break

    out.print(audit_table(shown[:TABLE_ROWS]))
    if len(shown) > TABLE_ROWS:
        out.print(
            f"the newest {TABLE_ROWS} shown: --since narrows, --format csv or jsonl exports all",
            highlight=False,
        )


@commands.command()
def serve(
    router: Annotated[
        bool, typer.Option(help="Run clonebot's own HAProxy on CLONEBOT_ROUTER_BIND.")
    ] = True,
) -> None:
    """Run clonebot: the Slack app, the router, and the worker that recovers dead jobs at start
    and runs orphaned queued ones. Stops on SIGINT or SIGTERM. Without SLACK_BOT_TOKEN (or with
    CLONEBOT_PLAYGROUND=1) the Slack app is played by the playground at
    http://127.0.0.1:PORT/, a page that works like a Slack channel.
    """

    async def work(svc: Services) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        configure_logging(svc.settings.log_format)
        take_priority(svc.settings.nice)  # threads and processes started later inherit it
        # first: a source a dead clonebot left paused must not wait for the checks, nor stay
        # paused if one fails
        _print_recovered(await recover_jobs(svc))
        await start_checks(svc.settings, router=router)
        async with contextlib.AsyncExitStack() as stack:
            settings = svc.settings
            if settings.slack_bot_token is None or settings.playground:
                svc, how, tell = await _serve_playground(svc, stack)
            else:
                from bot.slack.app import running_app  # Bolt loads only where it serves
                from bot.slack.sweeps import tellers

                bot = await stack.enter_async_context(running_app(svc))
                tell = tellers(bot.notices)
                how = (
                    "Slack over Socket Mode"
                    if settings.slack_app_token
                    else f"Slack at http://{settings.http_host}:{settings.port}/slack/events"
                )
            out.print(f"clonebot serving; {how}; stop with Ctrl-C", highlight=False)
            await supervise(svc, stop=stop, on_recovered=_print_recovered, router=router, tell=tell)

    # a SIGTERM while starting (before the loop's own handler) stops at once, as asked: it
    # finds nothing started yet that would need stopping
    signal.signal(signal.SIGTERM, _exit_now)
    run(work)


async def _serve_playground(
    svc: Services, stack: contextlib.AsyncExitStack
) -> tuple[Services, str, Tellers]:
    """The Slack app played by the playground on 127.0.0.1:PORT, its address printed first;
    if PORT is taken, clonebot runs on without it (and without /healthz), as it says."""
    from bot.playground.serving import running_playground  # Bolt loads only where it serves
    from bot.slack.sweeps import tellers

    try:
        played, playground, bot = await stack.enter_async_context(running_playground(svc))
    except OSError as exc:
        log.warning("the playground is off: port %s: %s", svc.settings.port, exc.strerror)
        return svc, "Slack is off (set SLACK_BOT_TOKEN to turn it on)", Tellers()
    out.print(f"Playground: {playground.url}", highlight=False)
    told = tellers(bot.notices)
    if svc.settings.slack_bot_token is not None:
        how = "the playground plays Slack (CLONEBOT_PLAYGROUND=1: the tokens are unused)"
        return played, how, told
    return played, "Slack is off; the playground plays it (set SLACK_BOT_TOKEN for Slack)", told


def _exit_now(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _print_recovered(recovered: list[Job]) -> None:
    for job in recovered:
        out.print(
            f"recovered job {job.id} ({job.kind} {job.environment}): {job.error}", soft_wrap=True
        )


@commands.command()
def recover() -> None:
    """Recover jobs whose clonebot process died: resume sources, remove partial clones."""
    recovered = run(recover_jobs)
    _print_recovered(recovered)
    out.print(f"{len(recovered)} job(s) recovered")


db_app = typer.Typer(help="The database.")
commands.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations (also done whenever clonebot starts)."""
    url = load_settings().database_url
    asyncio.run(upgrade(url))
    out.print(f"database schema is up to date ({url.split('://', 1)[0]})")


def _job_json(j: Job) -> dict[str, object]:
    keys: tuple[str, ...] = ("id", "kind", "environment", "source", "state", "step")
    keys += ("requester", "error", "engine", "source_engine")  # its engine, and its source's
    data: dict[str, object] = {k: getattr(j, k) for k in keys}
    data["freeze_ms"] = j.freeze_ms
    data["created_at"] = j.created_at.isoformat()
    data["finished_at"] = j.finished_at.isoformat() if j.finished_at else None
    return data

"""``clonebot doctor``: every check of what clonebot needs, one line each, with its fix."""

from __future__ import annotations

import asyncio
import json
import logging

import typer
from pydantic import ValidationError

from bot.cli_common import JsonFlag, bad_setting, out
from services.doctor import Result, host_checks, run_checks
from services.errors import ClonebotError
from services.settings import Settings, get_settings

commands = typer.Typer()
log = logging.getLogger(__name__)


@commands.command()
def doctor(as_json: JsonFlag = False) -> None:
    """Check the Docker engine, the helper image, HAProxy, the database, Slack and the
    settings; exit 0 only when every check passes (what is not configured is skipped)."""
    try:
        results = asyncio.run(diagnose(get_settings()))
    except ValidationError as exc:  # nothing else can be checked without the settings
        fix = "see the Settings table of the README"
        results = [Result("settings", ok=False, detail=f"bad setting {bad_setting(exc)}", fix=fix)]
    if as_json:
        print(json.dumps([r.as_json() for r in results], indent=2))
    else:
        for result in results:
            show(result)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


async def diagnose(settings: Settings) -> list[Result]:
    from bot.slack.doctor import slack_checks  # slack_sdk: only the doctor and serve need it

    async with host_checks(settings) as checks:
        return await run_checks([*checks, slack_checks(settings)])


def show(result: Result) -> None:
    mark = "[green]ok[/]  " if result.ok else "[red]FAIL[/]"
    if result.skipped:
        mark = "[dim]skip[/]"
    line = f"{mark} {result.check}: {result.detail}"
    if not result.ok:
        line += f"\n     fix: {result.fix}"
    out.print(line, highlight=False, soft_wrap=True)  # in order, failures among the rest


ROUTER_CHECKS = ("haproxy", "router address", "router socket")
# Room on the engine: short of it each clone is refused, saying so; traffic, deletes and the
# rest still work, so serve starts (warning) rather than take them away too.
CAPACITY_CHECKS = ("docker disk", "docker networks")


async def start_checks(settings: Settings, *, router: bool) -> None:
    """The doctor's checks, as ``serve`` starts: a failing one stops it, named, with its fix.

    Without a router its checks do not count. In external router mode an HAProxy that does
    not answer yet is waited for, not refused: serve writes the router folder it starts from
    and drives it once it answers. Short of disk or networks, serve starts and warns: clones
    are refused, the rest works.
    """
    from bot.slack.doctor import slack_checks

    async with host_checks(settings) as chains:
        chains = [*chains, slack_checks(settings)]
        if not router:
            chains = [[c for c in chain if c[0] not in ROUTER_CHECKS] for chain in chains]
        results = await run_checks(chains)
    waited = CAPACITY_CHECKS + (("router socket",) if settings.router_mode == "external" else ())
    for short in (r for r in results if not r.ok and r.check in waited):
        log.warning("%s: %s; until then: %s", short.check, short.detail, short.fix)
    if failing := [r for r in results if not r.ok and r.check not in waited]:
        for result in failing:
            show(result)
        names = ", ".join(r.check for r in failing)
        raise NotReady(f"not starting: {names} failed (`clonebot doctor` shows every check)")
    skipped = sum(r.skipped for r in results)
    log.info("checks passed: %d, skipped: %d", len(results) - skipped, skipped)


class NotReady(ClonebotError):
    """A check ``serve`` runs at start failed."""

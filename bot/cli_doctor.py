"""``clonebot doctor``: every check of what clonebot needs, one line each, with its fix."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import typer

from bot.cli_common import JsonFlag, load_settings, out
from bot.slack.doctor import slack_checks
from services.doctor import Result, host_checks, run_checks
from services.errors import ClonebotError
from services.settings import Settings

commands = typer.Typer()
log = logging.getLogger(__name__)


@commands.command()
def doctor(as_json: JsonFlag = False) -> None:
    """Check the Docker engine, the helper image, HAProxy, the database, Slack and the
    settings; exit 0 only when every check passes (what is not configured is skipped)."""
    results = asyncio.run(diagnose(load_settings()))
    if as_json:
        print(json.dumps([r.as_json() for r in results], indent=2))
    else:
        for result in results:
            show(result)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


async def diagnose(settings: Settings) -> list[Result]:
    async with host_checks(settings) as checks:
        return await run_checks([*checks, *slack_checks(settings)])


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
WAIT_S = 2.0  # how often serve asks again for the external HAProxy it waits for


async def start_checks(settings: Settings, *, stop: asyncio.Event, router: bool) -> None:
    """The doctor's checks, as ``serve`` starts: a failing one stops it, named, with its fix.

    In external router mode an HAProxy that does not answer yet is waited for (it may be
    starting beside clonebot), not refused; without a router its checks do not count. Short
    of disk or networks, serve starts and warns: clones are refused, the rest works.
    """
    async with host_checks(settings) as checks:
        checks = [*checks, *slack_checks(settings)]
        if not router:
            checks = [(name, call) for name, call in checks if name not in ROUTER_CHECKS]
        results = await run_checks(checks)
        socket_check = [(n, c) for n, c in checks if n == "router socket"]
        while _only_the_router_is_missing(settings, results) and not stop.is_set():
            missing = next(r for r in results if not r.ok)
            log.warning("waiting for the external HAProxy: %s", missing.detail)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=WAIT_S)
            results = [r for r in results if r.check != "router socket"]
            results += await run_checks(socket_check)
    for short in (r for r in results if not r.ok and r.check in CAPACITY_CHECKS):
        log.warning(
            "%s: %s; clones will be refused until: %s", short.check, short.detail, short.fix
        )
    if failing := [r for r in results if not r.ok and r.check not in CAPACITY_CHECKS]:
        for result in failing:
            show(result)
        names = ", ".join(r.check for r in failing)
        raise NotReady(f"not starting: {names} failed (`clonebot doctor` shows every check)")
    skipped = sum(r.skipped for r in results)
    log.info("checks passed: %d, skipped: %d", len(results) - skipped, skipped)


def _only_the_router_is_missing(settings: Settings, results: list[Result]) -> bool:
    failing = [r.check for r in results if not r.ok]
    return settings.router_mode == "external" and failing == ["router socket"]


class NotReady(ClonebotError):
    """A check ``serve`` runs at start failed."""

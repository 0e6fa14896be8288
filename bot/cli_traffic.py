"""Command-line commands about traffic: domains, swap, split, failover, routes."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli_common import AsUser, JsonFlag, err, load_settings, out, run
from services.access import Request
from services.context import Services
from services.errors import ClonebotError
from services.traffic.domain_https import HttpsState, describe, get_https, parse_max_age, set_https
from services.traffic.haproxy import RouterFiles, locked, render_config, write_files
from services.traffic.router import apply_bindings, apply_now, router_state, swap_routes
from services.traffic.routing import (
    add_domain,
    parse_weights,
    remove_domain,
    set_failover,
    set_split,
)

commands = typer.Typer()

domain_app = typer.Typer(help="Custom domains of an environment.")
commands.add_typer(domain_app, name="domain")
router_app = typer.Typer(help="The router folder an external HAProxy reads.")
commands.add_typer(router_app, name="router")


@router_app.command("init")
def router_init() -> None:
    """Write the router folder's first configuration (no route yet) unless it has one: what
    an external HAProxy starts from (`haproxy -W -S DIR/master.sock -f DIR/haproxy.cfg`);
    `clonebot serve` brings it to every route once it answers."""
    settings = load_settings()
    assert settings.router_dir is not None
    files = RouterFiles(settings.router_dir)

    async def first_files() -> bool:
        async with locked(files):
            if await asyncio.to_thread(files.config.exists):
                return False
            config = render_config(files=files, bind=settings.router_bind, backends=[])
            await write_files(files, config=config, hosts={})
            return True

    try:
        wrote = asyncio.run(first_files())
    except ClonebotError as exc:
        err.print(f"[red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        err.print(f"[red]error:[/] {settings.router_dir}: {exc.strerror}", highlight=False)
        raise typer.Exit(1) from None
    done = f"wrote {files.config}" if wrote else f"{files.config} is there: left as it is"
    out.print(done, highlight=False)


async def _applied(svc: Services, *, bindings_only: bool = False) -> str:
    applied = await (apply_bindings if bindings_only else apply_now)(svc)
    return _told(svc, applied=applied)


def _told(svc: Services, *, applied: bool) -> str:
    if applied:
        return "applied to HAProxy"
    if svc.settings.router_mode == "external":
        assert svc.settings.router_dir is not None
        master = RouterFiles(svc.settings.router_dir).master
        return f"no HAProxy answers at {master}: applied when it starts"
    return "HAProxy is not running: applied when `clonebot serve` starts"


@domain_app.command("add")
def domain_add(env: str, domain: str, user: AsUser) -> None:
    """Bind a custom domain to an environment."""

    async def work(svc: Services) -> str:
        name = await add_domain(svc, Request(user), env=env, domain=domain)
        return f"{name} -> {env}; {await _applied(svc, bindings_only=True)}"

    out.print(run(work), highlight=False)


@domain_app.command("remove")
def domain_remove(env: str, domain: str, user: AsUser) -> None:
    """Unbind a custom domain from an environment."""

    async def work(svc: Services) -> str:
        name = await remove_domain(svc, Request(user), env=env, domain=domain)
        return f"{name} removed from {env}; {await _applied(svc, bindings_only=True)}"

    out.print(run(work), highlight=False)


@commands.command()
def swap(first: str, second: str, user: AsUser) -> None:
    """Exchange the custom domains of two environments, in one atomic step."""

    async def work(svc: Services) -> str:
        applied = await swap_routes(svc, Request(user), first=first, second=second)
        return f"domains of {first} and {second} swapped; {_told(svc, applied=applied)}"

    out.print(run(work), highlight=False)


@commands.command()
def split(
    domain: str,
    weights: Annotated[list[str], typer.Argument(help="Two ENV=WEIGHT, like prod=90 dev=10.")],
    user: AsUser,
    sticky: Annotated[bool, typer.Option(help="Keep each visitor on one side (A/B).")] = False,
) -> None:
    """Share a domain's traffic by weight between two environments."""

    async def work(svc: Services) -> str:
        shares = parse_weights(weights)
        await set_split(svc, Request(user), domain=domain, weights=shares, sticky=sticky)
        return f"{domain} split {shares}; {await _applied(svc)}"

    out.print(run(work), highlight=False)


@commands.command()
def failover(domain: str, primary: str, backup: str, user: AsUser) -> None:
    """Send a domain to PRIMARY, and to BACKUP while PRIMARY's web nodes fail."""

    async def work(svc: Services) -> str:
        await set_failover(svc, Request(user), domain=domain, primary=primary, backup=backup)
        return f"{domain}: {primary}, failing over to {backup}; {await _applied(svc)}"

    out.print(run(work), highlight=False)


@commands.command()
def routes(as_json: JsonFlag = False) -> None:
    """What every domain is routed to, as HAProxy is told."""

    state = run(router_state)
    backends = {b.name: b for b in state.backends}
    rows = {
        host: [(s.name, s.weight, s.backup) for s in backends[name].servers]
        for host, name in state.hosts.items()
    }
    stopped = {s.name for b in state.backends for s in b.servers if not s.running}
    for env, reason in sorted(state.left_out.items()):  # on stderr: --json stays parseable
        typer.echo(f"warning: {env} is left out of routing: {reason}", err=True)
    if as_json:
        print(json.dumps({h: [list(s) for s in v] for h, v in rows.items()}, indent=2))
        return
    table = Table("domain", "servers (weight)")
    for host, servers in sorted(rows.items()):
        table.add_row(
            host,
            ", ".join(
                f"{n} ({w}{' backup' if b else ''}{' stopped' if n in stopped else ''})"
                for n, w, b in servers
            ),
        )
    out.print(table)


@domain_app.command("https")
def domain_https(
    domain: str,
    user: AsUser,
    redirect: Annotated[
        bool | None, typer.Option("--redirect/--no-redirect", help="Send plain HTTP to HTTPS.")
    ] = None,
    hsts: Annotated[
        bool | None, typer.Option("--hsts/--no-hsts", help="Send Strict-Transport-Security.")
    ] = None,
    hsts_max_age: Annotated[
        str | None,  # parsed as Slack's hsts=SECONDS is: ASCII digits alone
        typer.Option(help="HSTS on, with this max-age in seconds (default CLONEBOT_HSTS_MAX_AGE)."),
    ] = None,
) -> None:
    """Show, or turn on or off, a custom domain's redirect of plain HTTP to HTTPS and its HSTS
    (they stay with the domain through a swap; in effect once HAProxy serves its certificate).
    An HSTS max-age over a year is for admins."""

    max_age = None if hsts_max_age is None else parse_max_age(hsts_max_age)
    if hsts_max_age is not None and max_age is None:
        raise typer.BadParameter(
            f"{hsts_max_age!r}: whole seconds, like 31536000", param_hint="'--hsts-max-age'"
        )

    async def work(svc: Services) -> str:
        if redirect is None and hsts is None and max_age is None:
            return _https_line(await get_https(svc, Request(user), domain=domain))
        state = await set_https(
            svc, Request(user), domain=domain, redirect=redirect, hsts=hsts, hsts_max_age=max_age
        )
        return _https_line(state)

    out.print(run(work), highlight=False)


def _https_line(state: HttpsState) -> str:
    line = f"{state.domain}: {describe(state)}"
    if state.in_effect is None:
        return f"{line}; HAProxy does not answer: in effect when it starts"
    if not state.in_effect:
        return (
            f"{line}; kept until {state.domain} is bound to an environment and HTTPS serves "
            "its own certificate"
        )
    return line

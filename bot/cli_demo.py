"""`clonebot demo`: the demo environment a new user clones first (``services/demo.py``)."""

from __future__ import annotations

from typing import Annotated

import typer

from bot.cli_common import err, out, run
from services.context import Services
from services.demo import DemoReport, ensure_demo, remove_demo
from services.settings import Settings
from services.traffic.router import apply_now
from services.traffic.routing import site_url

commands = typer.Typer()


@commands.command()
def demo(
    remove: Annotated[
        bool, typer.Option("--remove", help="Delete the demo instead (its image stays).")
    ] = False,
) -> None:
    """Make sure the demo environment exists (a shop on shop.localhost, with a database, to
    clone) and print its addresses; only what is missing is made."""
    if remove:
        out.print("demo deleted" if run(_remove) else "there is no demo to delete")
        return

    async def work(svc: Services) -> tuple[DemoReport, bool, Settings]:
        report = await ensure_demo(svc, say=lambda line: err.print(line, highlight=False))
        return report, await apply_now(svc), svc.settings

    report, applied, settings = run(work)
    _print(report, applied=applied, settings=settings)


async def _remove(svc: Services) -> bool:
    removed = await remove_demo(svc)
    await apply_now(svc)  # a running router stops serving its domain at once
    return removed


def _print(report: DemoReport, *, applied: bool, settings: Settings) -> None:
    state = "; ".join(report.done) if report.done else "all there already, nothing changed"
    out.print(f"demo [green]{report.name}[/]: {state}", highlight=False, soft_wrap=True)
    port = settings.router_port
    served = "" if report.served_by == report.name else f"  (served by {report.served_by})"
    out.print(f"  {site_url(report.domain, port=port)}{served}", highlight=False)
    internal = f"{report.name}.{settings.base_domain}"
    out.print(f"  {site_url(internal, port=port)}", highlight=False)
    if not applied:
        out.print("  (the router serves them once `clonebot serve` runs)")

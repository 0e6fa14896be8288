"""The command line: ``clonebot envs|clone|refresh|delete``, over the same services as Slack."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from bot.progress_view import ProgressView
from services.cloning import CloneResult
from services.docker import DockerClient
from services.environments import Environment, list_environments
from services.errors import ClonebotError, Refused
from services.lifecycle import clone_environment, delete_environment, refresh_clone
from services.progress import EventSink, ignore_events
from services.settings import Settings, get_settings

T = TypeVar("T")
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
out = Console()
err = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]


def main() -> None:
    app()


def _run(work: Callable[[DockerClient, Settings], Awaitable[T]], *, as_json: bool = False) -> T:
    """Run one service call; turn clonebot's errors into one line and a non-zero exit.

    With ``as_json`` a failure also prints one JSON object, as success does.
    """

    async def go() -> T:
        settings = get_settings()
        async with DockerClient(settings.docker_host) as docker:
            return await work(docker, settings)

    try:
        return asyncio.run(go())
    except ClonebotError as exc:
        refused = isinstance(exc, Refused)
        err.print(
            f"[red]{'refused' if refused else 'error'}:[/] {exc.message}",
            highlight=False,
            soft_wrap=True,
        )
        if as_json:
            failure = {"state": "failed", "refused": refused, "error": exc.message}
            print(json.dumps({**failure, "freeze_ms": 0, "warnings": []}))
        raise typer.Exit(2 if refused else 1) from None


@app.command()
def envs(as_json: JsonFlag = False) -> None:
    """List the environments on the Docker engine."""
    environments = _run(lambda docker, _: list_environments(docker))
    if as_json:
        print(json.dumps([_env_json(e) for e in environments], indent=2))
        return
    table = Table("environment", "layers", "nodes", "cloned from", "owner")
    for env in environments:
        layers = ", ".join(f"{layer.name} ({layer.scaling})" for layer in env.layers)
        running = sum(n.state == "running" for n in env.nodes)
        table.add_row(
            env.name,
            layers,
            f"{running}/{len(env.nodes)} running",
            env.cloned_from or "",
            env.owner or "",
        )
    out.print(table)


@app.command()
def clone(
    source: Annotated[str, typer.Argument(help="The environment to copy.")],
    name: Annotated[
        str | None, typer.Argument(help="The clone's name (default: SOURCE-cloneN).")
    ] = None,
    snapshot: Annotated[bool, typer.Option(help="Create the clone without starting it.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Make a complete, running copy of an environment."""
    _job(
        lambda docker, settings, emit: clone_environment(
            docker, settings, source=source, name=name, snapshot=snapshot, emit=emit
        ),
        as_json=as_json,
    )


@app.command()
def refresh(
    name: Annotated[str, typer.Argument(help="The clone to refresh.")], as_json: JsonFlag = False
) -> None:
    """Re-copy a clone's stateful data from its source."""
    _job(
        lambda docker, settings, emit: refresh_clone(docker, settings, name=name, emit=emit),
        as_json=as_json,
    )


@app.command()
def delete(
    name: Annotated[str, typer.Argument(help="The environment to delete.")],
    force: Annotated[
        bool, typer.Option(help="Also delete an environment that is not a clone.")
    ] = False,
) -> None:
    """Delete an environment: its containers, networks, volumes and snapshot images."""
    env = _run(lambda docker, _: delete_environment(docker, name=name, force=force))
    out.print(f"deleted {env.name} ({len(env.nodes)} nodes)")


def _job(
    work: Callable[[DockerClient, Settings, EventSink], Awaitable[CloneResult]], *, as_json: bool
) -> None:
    if as_json:
        result = _run(lambda docker, settings: work(docker, settings, ignore_events), as_json=True)
        print(json.dumps(dataclasses.asdict(result), indent=2))
        return
    with ProgressView(out) as view:
        result = _run(lambda docker, settings: work(docker, settings, view))
    _print_result(result)


def _print_result(result: CloneResult) -> None:
    started = "running" if result.started else "created, not started (snapshot)"
    out.print(
        f"[green]{result.environment}[/] is {started}: {len(result.nodes)} nodes in "
        f"{result.elapsed_ms / 1000:.1f} s; source frozen {result.freeze_ms} ms at most",
        soft_wrap=True,
    )
    for rw in result.rewrites:
        out.print(
            f"  rewrote {rw.node} {rw.variable}: {rw.old} -> {rw.new}",
            highlight=False,
            soft_wrap=True,
        )
    for port in result.ports:
        out.print(
            f"  port {port.node} {port.container_port}: host {port.old} -> {port.new}",
            highlight=False,
        )
    for warning in result.warnings:
        out.print(f"  [yellow]warning:[/] {warning}")


def _env_json(env: Environment) -> dict[str, Any]:
    return {
        "name": env.name,
        "owner": env.owner,
        "cloned_from": env.cloned_from,
        "layers": [
            {
                "name": layer.name,
                "scaling": layer.scaling,
                "http_port": layer.http_port,
                "nodes": [
                    {"name": n.name, "number": n.number, "state": n.state} for n in layer.nodes
                ],
            }
            for layer in env.layers
        ],
    }


if __name__ == "__main__":
    main()

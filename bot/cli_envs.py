"""Commands about environments: envs, clone, refresh, delete, rename."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli_common import AsUser, JsonFlag, err, out, run
from bot.progress_view import ProgressView
from services.access import Request
from services.cloning import CloneResult
from services.context import Services
from services.environments import Environment
from services.jobs import (
    job_result,
    run_job,
    submit_clone,
    submit_delete,
    submit_refresh,
    submit_rename,
)
from services.located import fleet_environments
from services.progress import EventSink, ignore_events
from storage import repositories as repo
from storage.models import EnvironmentRecord, Job, JobState

commands = typer.Typer()


@commands.command()
def envs(as_json: JsonFlag = False) -> None:
    """List the environments on the Docker engine, with their owners; those that are down
    (recorded, with no container) too."""

    async def work(svc: Services) -> tuple[list[Listed], dict[str, str]]:
        async with svc.sessions() as session:
            records = {r.name: r for r in await repo.list_environments(session)}
        view = await fleet_environments(svc)
        up = {e.name for e in view.environments}
        down = [r for n, r in records.items() if r.state == "ready" and n not in up]
        found = [*view.environments, *(Environment(r.name, (), r.engine) for r in down)]
        found.sort(key=lambda e: e.name)
        return [(e, records.get(e.name)) for e in found], view.unreachable

    environments, away = run(work)
    for engine, why in away.items():
        err.print(f"[yellow]engine {engine} does not answer:[/] {escape(why)}", highlight=False)
    if as_json:
        print(json.dumps([_env_json(e, record, away) for e, record in environments], indent=2))
        return
    table = Table("environment", "engine", "layers", "nodes", "cloned from", "owner", "expires")
    for env, record in environments:
        layers = ", ".join(f"{layer.name} ({layer.scaling})" for layer in env.layers)
        running = sum(n.state == "running" for n in env.nodes)
        nodes = f"{running}/{len(env.nodes)} running" if env.nodes else "[yellow]down[/]"
        if env.engine in away:
            nodes = "[red]unreachable[/]"
        elif record is not None and record.stopped and env.nodes:
            nodes += f" ({record.stopped})"
        owner = _owner(env, record) or "(unowned)"
        name = f"{env.name} (stack)" if env.kind == "stack" else env.name
        row = (name, env.engine, layers, nodes, env.cloned_from or "", owner)
        table.add_row(*row, _expires(record))
    out.print(table)


Listed = tuple[Environment, EnvironmentRecord | None]


def _owner(env: Environment, record: EnvironmentRecord | None) -> str | None:
    return record.owner if record is not None else env.owner


def _expires(record: EnvironmentRecord | None) -> str:
    if record is None or record.expires_at is None:
        return "never" if record is not None and record.cloned_from else ""
    return record.expires_at.strftime("%Y-%m-%d %H:%M UTC")


@commands.command()
def clone(
    source: Annotated[str, typer.Argument(help="The environment to copy.")],
    name: Annotated[
        str | None, typer.Argument(help="The clone's name (default: SOURCE-cloneN).")
    ] = None,
    user: AsUser = ...,  # type: ignore[assignment]
    snapshot: Annotated[bool, typer.Option(help="Create the clone without starting it.")] = False,
    ttl: Annotated[
        str | None,
        typer.Option(
            help="How long the clone lives: 3d, 12h, 2w (default CLONEBOT_DEFAULT_TTL), or "
            "never (SOURCE's owner or an admin)."
        ),
    ] = None,
    on: Annotated[
        str | None,
        typer.Option("--on", help="The engine to make it on (default: the source's)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Make a complete, running copy of an environment (it becomes yours)."""
    request = Request(user)
    _job(
        lambda svc: submit_clone(
            svc, request, source=source, name=name, snapshot=snapshot, ttl=ttl, on=on
        ),
        as_json=as_json,
    )


@commands.command()
def refresh(
    name: Annotated[str, typer.Argument(help="The clone to refresh.")],
    user: AsUser = ...,  # type: ignore[assignment]
    as_json: JsonFlag = False,
) -> None:
    """Re-copy a clone's stateful data from its source."""
    _job(lambda svc: submit_refresh(svc, Request(user), name=name), as_json=as_json)


@commands.command()
def delete(
    name: Annotated[str, typer.Argument(help="The environment to delete.")],
    user: AsUser = ...,  # type: ignore[assignment]
    force: Annotated[
        bool,
        typer.Option(
            help="Also delete an environment that is not a clone, or the volumes one that is "
            "down left."
        ),
    ] = False,
) -> None:
    """Delete an environment: its containers, networks, volumes and snapshot images."""
    job = run(
        lambda svc: _submit_and_run(
            svc, submit_delete(svc, Request(user), name=name, force=force), ignore_events
        )
    )
    out.print(f"deleted {job.environment}")


@commands.command()
def rename(
    name: Annotated[str, typer.Argument(help="The environment to rename.")],
    new_name: Annotated[str, typer.Argument(help="Its new name.")],
    user: AsUser = ...,  # type: ignore[assignment]
) -> None:
    """Rename an environment: its nodes are re-created under the new name, on the same data.

    Its nodes stop for the few seconds this takes; its internal domain moves with it, and
    its custom domains, routes and people stay.
    """
    job = run(
        lambda svc: _submit_and_run(
            svc, submit_rename(svc, Request(user), name=name, new_name=new_name), ignore_events
        )
    )
    result = _result(job)
    out.print(
        f"renamed {job.environment} to [green]{job.params['to']}[/] in "
        f"{result.elapsed_ms / 1000:.1f} s (job {job.id})",
        soft_wrap=True,
    )
    _print_details(result)


def _job(submit: Callable[[Services], Awaitable[Job]], *, as_json: bool) -> None:
    if as_json:
        job = run(lambda svc: _submit_and_run(svc, submit(svc), ignore_events), as_json=True)
        print(json.dumps({"job": job.id, **(job.result or {}), "state": job.state}, indent=2))
        return
    with ProgressView(out) as view:
        job = run(lambda svc: _submit_and_run(svc, submit(svc), view))
    _print_result(job)


async def _submit_and_run(svc: Services, submitted: Awaitable[Job], emit: EventSink) -> Job:
    job = await submitted
    if job.state != JobState.QUEUED:  # a repeated request: show the job it already started
        return job
    return await run_job(svc, job.id, emit=emit)


def _print_result(job: Job) -> None:
    result = _result(job)
    started = "running" if result.started else "created, not started (snapshot)"
    out.print(
        f"[green]{job.environment}[/] is {started}: {len(result.nodes)} nodes in "
        f"{result.elapsed_ms / 1000:.1f} s; source frozen "
        f"{result.freeze_ms} ms at most (job {job.id})",
        soft_wrap=True,
    )
    _print_details(result)


def _result(job: Job) -> CloneResult:
    return job_result(job) or CloneResult(job.id, job.environment, job.source or "", job.state)


def _print_details(result: CloneResult) -> None:
    """What the job changed that its user should know: rewrites, ports, warnings."""
    for rw in result.rewrites:
        # which hosts changed, never the value: it may hold a password
        out.print(f"  rewrote {rw.node} {rw.describe()}", highlight=False, soft_wrap=True)
    for port in result.ports:
        line = f"  port {port.node} {port.container_port}: host {port.old} -> {port.new}"
        if not port.old:  # a web node on another engine: published for the router
            line = f"  port {port.node} {port.container_port}: published on host port {port.new}"
        out.print(line, highlight=False, soft_wrap=True)
    for warning in result.warnings:
        out.print(f"  [yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def _env_json(
    env: Environment, record: EnvironmentRecord | None, away: dict[str, str]
) -> dict[str, Any]:
    expires = record.expires_at if record is not None else None
    state = "unreachable" if env.engine in away else "up" if env.nodes else "down"
    return {
        "name": env.name,
        "engine": env.engine,
        "kind": env.kind,
        "owner": _owner(env, record),
        "cloned_from": env.cloned_from,
        "state": state,
        "expires_at": expires.isoformat() if expires is not None else None,
        "stopped": record.stopped if record is not None else None,
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

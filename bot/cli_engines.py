"""Command-line commands about the Docker engines clonebot drives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bot.cli_common import AsUser, JsonFlag, out, run
from services.access import Request
from services.engines import EngineStatus, add_engine, engine_statuses, remove_engine

commands = typer.Typer()
engine_app = typer.Typer(help="The Docker engines environments live on.")
commands.add_typer(engine_app, name="engine")


@engine_app.command("add")
def engine_add(
    name: Annotated[str, typer.Argument(help="Its name in clonebot: staging, build-2.")],
    url: Annotated[
        str,
        typer.Argument(help="unix:///path/docker.sock, tcp://host:2376, or ssh://user@host."),
    ],
    user: AsUser,
    keys_dir: Annotated[
        Path | None,
        typer.Option(
            "--tls-dir",
            "--ssh-dir",
            help="For tcp://: the folder of ca.pem, cert.pem and key.pem (TLS). For ssh://: "
            "the folder of the private key (id_ed25519, id_ecdsa or id_rsa) and known_hosts.",
        ),
    ] = None,
) -> None:
    """Admins: drive one more Docker engine (it must answer, and not be one clonebot has)."""
    folder = keys_dir.absolute() if keys_dir is not None else None
    found = run(lambda svc: add_engine(svc, Request(user), name=name, url=url, keys_dir=folder))
    out.print(f"engine {name} added: {found.detail}", highlight=False)


@engine_app.command("remove")
def engine_remove(name: str, user: AsUser) -> None:
    """Admins: stop driving an engine added with `engine add` (what it holds stays there)."""
    run(lambda svc: remove_engine(svc, Request(user), name=name))
    out.print(f"engine {name} removed", highlight=False)


@engine_app.command("list")
def engine_list(as_json: JsonFlag = False) -> None:
    """The engines, whether each answers, and how many environments each holds."""
    found = run(engine_statuses)
    if as_json:
        print(json.dumps([_json(s) for s in found], indent=2))
        return
    table = Table("engine", "url", "from", "state", "environments")
    for s in found:
        state = s.detail if s.answers else f"[red]unreachable:[/] {s.detail}"
        table.add_row(s.spec.name, s.spec.url, s.spec.origin, state, str(s.environments))
    out.print(table)


def _json(status: EngineStatus) -> dict[str, object]:
    return {
        "name": status.spec.name,
        "url": status.spec.url,
        "keys_dir": str(status.spec.keys_dir) if status.spec.keys_dir else None,
        "from": status.spec.origin,
        "answers": status.answers,
        "detail": status.detail,
        "environments": status.environments,
    }

"""The command line: the same services as Slack, for people at a shell and for scripts.

The root: each command module makes its own commands and this one puts them together (a
command module never imports this one)."""

from __future__ import annotations

import typer

from bot import (
    cli_admin,
    cli_approvals,
    cli_certs,
    cli_demo,
    cli_doctor,
    cli_engines,
    cli_envs,
    cli_lifecycle,
    cli_schedules,
    cli_traffic,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n\n")[0])
for commands in (
    cli_envs,
    cli_lifecycle,
    cli_schedules,
    cli_approvals,
    cli_admin,
    cli_traffic,
    cli_certs,
    cli_demo,
    cli_doctor,
    cli_engines,
):
    app.add_typer(commands.commands)


def main() -> None:
    app()

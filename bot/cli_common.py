"""What every command module shares: the consoles, common options, and ``run``, which runs one
service call and turns clonebot's errors into one line and an exit code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from services.context import Services, open_services
from services.errors import ClonebotError, Refused
from services.settings import Settings, get_settings

T = TypeVar("T")
out = Console()
err = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
AsUser = Annotated[str, typer.Option("--as", help="Who asks: a Slack user ID (U012AB3CD).")]


def run(work: Callable[[Services], Awaitable[T]], *, as_json: bool = False) -> T:
    """Run one service call; turn clonebot's errors into one line and a non-zero exit.

    With ``as_json`` a failure also prints one JSON object, as success does.
    """

    settings = load_settings()

    async def go() -> T:
        async with open_services(settings) as svc:
            return await work(svc)

    try:
        return asyncio.run(go())
    except ClonebotError as exc:
        refused = isinstance(exc, Refused)
        kind = "refused" if refused else "error"
        err.print(f"[red]{kind}:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        if as_json:
            failure = {"state": "failed", "refused": refused, "error": exc.message}
            print(json.dumps({**failure, "freeze_ms": 0, "warnings": []}))
        raise typer.Exit(2 if refused else 1) from None
    except Exception as exc:  # the last resort: one line, never a stack trace
        err.print(
            f"[red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def load_settings() -> Settings:
    """The settings, or one line naming the bad one and exit code 2."""
    try:
        return get_settings()
    except ValidationError as exc:
        err.print(
            f"[red]bad setting[/] {escape(bad_setting(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(2) from None


def bad_setting(exc: ValidationError) -> str:
    """``NAME: what is wrong`` for the first setting refused."""
    first = exc.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else "settings"
    return f"{name}: {first['msg']}"

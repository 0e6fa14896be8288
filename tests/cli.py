"""The command line as a person runs it: a process of its own per command, with its own
environment, output and exit code, forked from one that has imported clonebot already.

Starting Python and importing clonebot (SQLAlchemy, aiodocker, Alembic) takes 1.5–2 s of
CPU; the tests ran the command line a few hundred times, on a 2-core machine. A fork server
(multiprocessing's) imports ``bot.cli`` once per test worker and forks a child for each
command, which then runs exactly what ``python -m bot`` runs. A fresh interpreter is still
tried by every test that starts ``python -m bot serve`` and by test_cli's import test.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from multiprocessing import forkserver
from pathlib import Path

from services.settings import Settings

_PROCESSES = multiprocessing.get_context("forkserver")
_PROCESSES.set_forkserver_preload(["bot.cli", "bot.slack.doctor"])


def clonebot(*args: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    """``clonebot ARGS`` with the test's settings, as a person at a shell runs it."""
    return run_cli(list(args), env=clonebot_env(settings) | {"COLUMNS": "200"})


def clonebot_env(settings: Settings) -> dict[str, str]:
    """The environment of a clonebot process on the test's engine, database and router."""
    return {
        **os.environ,
        "DOCKER_HOST": settings.docker_host,
        "DATABASE_URL": settings.database_url,
        "CLONEBOT_ADMINS": ",".join(settings.admins),
        "CLONEBOT_ROUTER_BIND": settings.router_bind,
        "CLONEBOT_ROUTER_DIR": str(settings.router_dir),
        "CLONEBOT_ROUTER_MODE": settings.router_mode,
    }


def run_cli(
    args: list[str], *, env: Mapping[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``clonebot ARGS`` in a process of its own, as ``subprocess.run(capture_output=True)``
    gives it: stdout, stderr and the exit code; killed past ``timeout``."""
    _start_fork_server()
    with tempfile.TemporaryDirectory(prefix="clonebot-cli-") as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        child = _PROCESSES.Process(target=_main, args=(args, dict(env), str(out), str(err)))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["clonebot", *args], timeout)
        stdout = out.read_text() if out.exists() else ""
        stderr = err.read_text() if err.exists() else ""
    return subprocess.CompletedProcess(["clonebot", *args], child.exitcode, stdout, stderr)


def _start_fork_server() -> None:
    """Once, without COLUMNS and LINES (pytest's, 80): rich's consoles, made as the fork server
    imports clonebot, would keep that width; each command brings its own."""
    terminal = {k: os.environ.pop(k) for k in ("COLUMNS", "LINES") if k in os.environ}
    try:
        forkserver.ensure_running()
    finally:
        os.environ.update(terminal)


def _main(args: list[str], env: dict[str, str], out: str, err: str) -> None:
    """In the child: the environment, standard streams and arguments of the command, then
    the command line's own ``main()`` (its SystemExit is the child's exit code)."""
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.argv = ["clonebot", *args]
    from bot.cli import main  # imported by the fork server already

    main()

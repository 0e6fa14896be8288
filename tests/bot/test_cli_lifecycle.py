"""A clone's life from the command line: --ttl, the expiry in `envs`, extend, sleep and wake,
protect and approvals, the quota refusal. A process per command, real output and exit codes
(see tests/cli.py)."""

from __future__ import annotations

import json
import re

from services.docker import DockerClient
from services.environments import get_environment
from services.settings import Settings
from tests.cli import clonebot
from tests.conftest import ADMIN, OWNER, MakeSource


def _ok(settings: Settings, *args: str) -> str:
    done = clonebot(*args, settings=settings)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def _refused(settings: Settings, *args: str) -> str:
    done = clonebot(*args, settings=settings)
    assert done.returncode == 2, (args, done.stdout, done.stderr)
    assert done.stderr.startswith("refused: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


async def test_ttl_extend_sleep_and_wake(
    settings: Settings, make_source: MakeSource, docker: DockerClient
) -> None:
    source = (await make_source(web_nodes=1, db_nodes=1)).name
    copy = f"{source}-t"
    assert "--ttl" in _refused(settings, "clone", source, copy, "--ttl", "3x", "--as", OWNER)
    _ok(settings, "clone", source, copy, "--ttl", "2d", "--as", OWNER)

    listed = {e["name"]: e for e in json.loads(_ok(settings, "envs", "--json"))}
    assert listed[source]["expires_at"] is None
    assert listed[copy]["expires_at"] is not None
    table = _ok(settings, "envs")
    assert re.search(rf"{copy} .* \d{{4}}-\d\d-\d\d \d\d:\d\d UTC", table), table

    extended = _ok(settings, "extend", copy, "1d", "--as", OWNER)
    assert extended.startswith(f"{copy} expires ")
    assert "belongs to" in _refused(settings, "extend", copy, "never", "--as", "USTRANGER")
    assert _ok(settings, "extend", copy, "never", "--as", ADMIN).strip() == f"{copy} never expires"

    assert f"{copy} is stopped" in _ok(settings, "sleep", copy, "--as", OWNER)
    assert {n.state for n in (await get_environment(docker, copy)).nodes} == {"exited"}
    assert "(asked)" in _ok(settings, "envs")
    assert "only works on clones" in _refused(settings, "sleep", source, "--as", OWNER)
    assert f"{copy} runs again" in _ok(settings, "wake", copy, "--as", OWNER)
    assert {n.state for n in (await get_environment(docker, copy)).nodes} == {"running"}


async def test_a_protected_environment_waits_for_approve_or_reject(
    settings: Settings, make_source: MakeSource, docker: DockerClient
) -> None:
    source = (await make_source(web_nodes=1, db_nodes=0)).name
    copy = f"{source}-p"
    _ok(settings, "clone", source, copy, "--as", OWNER)
    _ok(settings, "protect", copy, "--as", OWNER)

    asked = _refused(settings, "delete", copy, "--as", OWNER)

    match = re.search(r"\(approval ([0-9a-f]{8})\)", asked)
    assert match is not None and f"{copy} is protected: to delete {copy}" in asked
    approval = match.group(1)
    waiting = json.loads(_ok(settings, "approvals", "--json"))
    assert [(a["id"], a["change"], a["asked_by"]) for a in waiting] == [
        (approval, f"delete {copy}", OWNER)
    ]
    assert "someone else" in _refused(settings, "approve", approval, "--as", OWNER)
    assert _ok(settings, "reject", approval, "--as", ADMIN).startswith(f"rejected: delete {copy}")
    assert (await get_environment(docker, copy)).nodes, "rejected: nothing deleted"
    assert json.loads(_ok(settings, "approvals", "--json")) == []

    again = re.search(
        r"\(approval ([0-9a-f]{8})\)", _refused(settings, "delete", copy, "--as", OWNER)
    )
    assert again is not None and again.group(1) != approval
    done = _ok(settings, "approve", again.group(1), "--as", ADMIN)
    assert done.startswith(f"approved and done: delete {copy}")
    assert copy not in {e["name"] for e in json.loads(_ok(settings, "envs", "--json"))}

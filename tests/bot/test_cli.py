"""The command line as a person runs it: a process of its own, real output, real exit codes
(see tests/cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from services.docker import DockerClient
from services.environments import get_environment
from services.settings import Settings
from tests.cli import clonebot
from tests.conftest import OWNER, MakeSource


async def test_envs_lists_sources_with_their_layers(
    settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=2)
    done = clonebot("envs", "--json", settings=settings)
    assert done.returncode == 0, done.stderr
    [env] = [e for e in json.loads(done.stdout) if e["name"] == source.name]
    layers = {layer["name"]: layer for layer in env["layers"]}
    assert layers["db"]["scaling"] == "stateful"
    assert layers["web"]["http_port"] == 80
    assert [n["name"] for n in layers["web"]["nodes"]] == [
        f"{source.name}_web_1",
        f"{source.name}_web_2",
    ]


async def test_clone_json_then_delete(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    done = clonebot(
        "clone", source.name, f"{source.name}-cli", "--json", "--as", OWNER, settings=settings
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["environment"] == f"{source.name}-cli"
    assert result["state"] == "succeeded"
    assert isinstance(result["freeze_ms"], int)
    assert result["warnings"] == []
    assert {r["variable"] for r in result["rewrites"]} == {"DB_URL", "SITE"}
    assert (await get_environment(docker, f"{source.name}-cli")).nodes

    deleted = clonebot("delete", f"{source.name}-cli", "--as", OWNER, settings=settings)
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted {source.name}-cli" in deleted.stdout


async def test_clone_shows_progress_and_what_it_changed(
    settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    done = clonebot("clone", source.name, "--as", OWNER, settings=settings)
    assert done.returncode == 0, done.stderr
    assert f"{source.name}-clone1 is running: 2 nodes" in done.stdout
    [db_row] = [
        ln for ln in done.stdout.splitlines() if ln.startswith(f"│ {source.name}-clone1-db-1 ")
    ]
    assert "KiB / " in db_row and "/s" in db_row, "the copy's size and rate stay on view"
    assert "source frozen" in done.stdout
    assert f"rewrote {source.name}-clone1-web-1 DB_URL" in done.stdout
    assert f"port {source.name}-clone1-db-1 5432/tcp: host {source.db_port} ->" in done.stdout


async def test_refusals_are_one_line_and_non_zero(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    for args, message in [
        (("clone", source.name, "Bad_Name"), "refused: invalid name 'Bad_Name'"),
        (("clone", "missing-env"), "refused: no environment named 'missing-env'"),
        (("clone", source.name, source.name), f"refused: an environment named '{source.name}'"),
        (("refresh", source.name), f"refused: '{source.name}' is not a clone"),
        (("delete", source.name), f"refused: '{source.name}' is not a clone"),
    ]:
        done = clonebot(*args, "--as", OWNER, settings=settings)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.startswith(message), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert done.stdout == ""
    assert len((await get_environment(docker, source.name)).nodes) == 2


async def test_json_failure_is_still_one_object(settings: Settings) -> None:
    done = clonebot("clone", "missing-env", "--json", "--as", OWNER, settings=settings)
    assert done.returncode == 2
    assert json.loads(done.stdout) == {
        "state": "failed",
        "refused": True,
        "error": "no environment named 'missing-env'",
        "freeze_ms": 0,
        "warnings": [],
    }


async def test_people_commands_and_their_refusals(
    settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    env = source.name

    def ok(*args: str) -> str:
        done = clonebot(*args, settings=settings)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def refused(*args: str) -> str:
        done = clonebot(*args, settings=settings)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        return done.stderr.strip()

    assert "Missing option '--as'" in clonebot("clone", env, settings=settings).stderr
    assert refused("clone", env, "--as", "bob") == (
        "refused: 'bob' is not a Slack user ID (like U012AB3CD)"
    )
    assert refused("share", env, "UFRIEND1", "--role", "boss", "--as", OWNER) == (
        "refused: unknown role 'boss': use viewer or operator"
    )
    assert refused("share", "no-such-env", "UFRIEND1", "--role", "viewer", "--as", OWNER) == (
        "refused: no environment named 'no-such-env'"
    )
    assert "belongs to <@UOWNER1>" in refused("clone", env, "--as", "USTRANGER")
    assert refused("adopt", env, "--owner", "UOTHER1", "--as", OWNER) == (
        "refused: only an admin may adopt an environment"
    )

    assert "shared with UFRIEND1 as operator" in ok(
        "share", env, "UFRIEND1", "--role", "operator", "--as", OWNER
    )
    assert "may not clone" in refused("clone", env, "--as", "UFRIEND1")
    assert f"{env} now belongs to UNEWOWNER" in ok("owner", env, "UNEWOWNER", "--as", OWNER)
    assert "belongs to <@UNEWOWNER>" in refused("clone", env, "--as", OWNER)

    audit = json.loads(ok("audit", "--env", env, "--json"))
    assert [(e["actor"], e["action"], e["allowed"]) for e in audit[:3]] == [
        (OWNER, "clone", False),
        (OWNER, "hand over", True),
        ("UFRIEND1", "clone", False),
    ]
    assert audit[0]["reason"] == f"{env} belongs to <@UNEWOWNER>; ask them to share it with you"


async def test_jobs_lists_what_ran(settings: Settings, make_source: MakeSource) -> None:
    source = await make_source(web_nodes=1)
    done = clonebot("clone", source.name, "--as", OWNER, "--snapshot", settings=settings)
    assert done.returncode == 0, done.stderr
    listed = clonebot("jobs", "--json", settings=settings)
    [job] = [j for j in json.loads(listed.stdout) if j["environment"] == f"{source.name}-clone1"]
    assert (job["kind"], job["state"], job["requester"]) == ("clone", "succeeded", OWNER)
    assert isinstance(job["freeze_ms"], int)


def test_a_bad_setting_stops_at_once_naming_it(settings: Settings) -> None:
    bad = settings.model_copy(update={"admins": frozenset({"bob"})})
    done = clonebot("envs", settings=bad)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "bad setting CLONEBOT_ADMINS: Value error, 'bob' is not a Slack user ID (like U012AB3CD)"
    )


def test_the_root_module_alone_is_the_whole_command_line() -> None:
    # A fresh interpreter: `from bot.cli import app`, as an embedding script would, must give
    # every command, not those of the modules that happened to be imported before.
    script = (
        "from typer.main import get_command; from bot.cli import app; "
        "print(' '.join(sorted(get_command(app).commands)))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    commands = set(done.stdout.split())
    assert {"clone", "serve", "db", "swap", "domain", "demo", "audit"} <= commands

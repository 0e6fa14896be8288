"""`clonebot doctor` and the same checks as `serve` starts: a real process against the real
engine, database, HAProxy and the Slack emulator; each failure named, with its fix."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from bot.slack.doctor import SCOPES
from services.engine_host import count_room, parse_proc_net, ports_in_use
from services.settings import Settings
from tests.cli import run_cli
from tests.slack.emulator import SlackEmulator

ROOT = Path(__file__).resolve().parents[2]
CHANNEL = "C0NOTIFY1"


async def clonebot(*args: str, timeout_s: float = 120, **env: str) -> tuple[int, str, str]:
    """The CLI in a process of its own; the loop goes on meanwhile (the emulator answers)."""
    environ = {**os.environ, "COLUMNS": "200", **env}
    done = await asyncio.to_thread(run_cli, list(args), env=environ, timeout=timeout_s)
    return done.returncode, done.stdout, done.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def ready(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose database is migrated and whose router address is free."""
    monkeypatch.setenv("CLONEBOT_ROUTER_BIND", f"127.0.0.1:{free_port()}")
    code, _, err = await clonebot("db", "upgrade")
    assert code == 0, err
    return settings


def by_check(stdout: str) -> dict[str, dict[str, Any]]:
    results = json.loads(stdout)
    assert all(set(r) >= {"check", "ok", "skipped", "fix"} for r in results)
    return {r["check"]: r for r in results}


async def test_all_pass_and_slack_is_skipped_while_off(ready: Settings) -> None:
    code, out, err = await clonebot("doctor", "--json")
    assert code == 0, out + err
    checks = by_check(out)
    assert all(r["ok"] for r in checks.values()), checks
    assert checks["slack token"]["skipped"] and checks["notify channel"]["skipped"]
    assert "API 1.41" in checks["docker engine"]["detail"] or "API 1.4" in out
    assert not checks["database"]["skipped"] and not checks["docker networks"]["skipped"]
    code, text, _ = await clonebot("doctor")
    assert code == 0
    assert "ok   docker engine: Docker" in text and "skip slack token" in text


async def test_each_failure_is_named_with_its_fix_and_the_rest_still_run(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with taken:
        bind = f"127.0.0.1:{taken.getsockname()[1]}"
        code, out, _ = await clonebot(
            "doctor",
            "--json",
            DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock",
            CLONEBOT_ROUTER_BIND=bind,  # and the database was never migrated
        )
    assert code == 1
    checks = by_check(out)
    failing = {name for name, r in checks.items() if not r["ok"]}
    assert failing >= {"docker engine", "router address", "database"}
    assert "DOCKER_HOST" in checks["docker engine"]["fix"]
    assert f"{bind} is taken" in checks["router address"]["detail"]
    assert "CLONEBOT_ROUTER_BIND" in checks["router address"]["fix"]
    assert "clonebot db upgrade" in checks["database"]["fix"]
    assert checks["haproxy"]["ok"] and checks["settings"]["ok"]  # not stopped by the failures
    code, text, _ = await clonebot("doctor", DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    assert code == 1
    assert "FAIL docker engine" in text and "     fix: start Docker" in text


async def test_a_bad_setting_is_a_failing_check_naming_it(settings: Settings) -> None:
    code, out, _ = await clonebot("doctor", "--json", CLONEBOT_NOTIFY_CHANNEL="#team")
    assert code == 1
    [result] = json.loads(out)
    assert result["check"] == "settings" and not result["ok"]
    assert result["detail"].startswith("bad setting CLONEBOT_NOTIFY_CHANNEL: ")
    assert "not a Slack channel ID" in result["detail"]


async def test_slack_token_scopes_and_notify_channel(
    ready: Settings, slack: SlackEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    slack_env = {
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_SIGNING_SECRET": "s3cret",
        "SLACK_API_URL": slack.api_url,
        "CLONEBOT_NOTIFY_CHANNEL": CHANNEL,
    }
    code, out, err = await clonebot("doctor", "--json", **slack_env)
    assert code == 0, out + err
    checks = by_check(out)
    assert not checks["slack token"]["skipped"] and checks["slack token"]["ok"]
    assert checks["notify channel"]["ok"] and "member" in checks["notify channel"]["detail"]

    slack.scopes.discard("channels:read")  # an app installed before the scope was added
    slack.workspace.outside.add(CHANNEL)
    code, out, _ = await clonebot("doctor", "--json", **slack_env)
    assert code == 1
    checks = by_check(out)
    assert checks["slack scopes"]["detail"] == "scopes not granted: channels:read"
    assert "reinstall" in checks["slack scopes"]["fix"]
    assert checks["notify channel"]["fix"].startswith("invite it: /invite @clonebot")

    code, out, _ = await clonebot("doctor", "--json", **slack_env | {"SLACK_BOT_TOKEN": "xoxb-x"})
    assert code == 1
    checks = by_check(out)
    assert "invalid_auth" in checks["slack token"]["detail"]
    assert "xoxb-x" not in out  # no token in what the doctor prints
    slack.take_violations()  # the wrong token was meant


async def test_serve_refuses_to_start_naming_the_failing_check(ready: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bind = f"127.0.0.1:{taken.getsockname()[1]}"
        code, out, err = await clonebot("serve", CLONEBOT_ROUTER_BIND=bind, PORT=str(free_port()))
    assert code == 1
    assert "not starting: router address failed" in err
    assert f"{bind} is taken" in out + err
    assert "clonebot serving" not in out


def test_the_doctor_asks_for_the_scopes_of_the_manifest() -> None:
    manifest = (ROOT / "manifest.yml").read_text()
    block = manifest.split("  scopes:\n    bot:\n", 1)[1].split("\nsettings:", 1)[0]
    assert set(re.findall(r"^ +- ([a-z:.]+)", block, flags=re.M)) == SCOPES


def test_network_room_counts_the_pools_subnets_no_network_overlaps() -> None:
    import ipaddress

    def nets(*cidrs: str) -> list[Any]:
        return [ipaddress.ip_network(c) for c in cidrs]

    pools = [("10.213.0.0/16", 24)]
    assert count_room(pools, []) == count_room(pools, nets("192.168.1.0/24"))
    assert count_room(pools, []).free == 256
    room = count_room(pools, nets("10.213.0.0/24", "10.213.7.0/24", "10.213.128.0/17"))
    assert (room.free, room.total) == (256 - 2 - 128, 256)
    # Docker's defaults: 15 networks of /16 and 16 of /20; the default bridge takes one
    defaults = [(f"172.{n}.0.0/16", 16) for n in range(17, 32)] + [("192.168.0.0/16", 20)]
    assert count_room(defaults, nets("172.17.0.0/16", "192.168.16.0/20")).free == 29


def test_proc_net_ports() -> None:
    listing = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0\n"
        "   1: 00000000000000000000000001000000:4E21 00000000000000000000000000000000:0000 0A\n"
    )
    assert parse_proc_net(listing) == {8080, 20001}


async def test_ports_in_use_are_read_on_the_engines_host(settings: Settings) -> None:
    from services.docker import DockerClient
    from services.volumes import ensure_helper_image

    async with DockerClient(settings.docker_host) as docker:
        await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            port = listening.getsockname()[1]
            busy = await ports_in_use(docker, image=settings.helper_image, labels={})
        assert port in busy

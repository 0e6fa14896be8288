"""ACME through `clonebot serve`: a certificate asked for from the command line is issued by a
real ACME server (Debian's pebble), shown in Slack with when it renews, and renewed by serve's
own check without a reload. Real clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from services.docker import DockerClient
from services.settings import Settings
from storage.models import Certificate, utcnow
from tests.cli import clonebot_env, run_cli
from tests.conftest import BASE_DOMAIN, OWNER, MakeSource, _free_port
from tests.pebble import run_pebble
from tests.serving import TEAM_CHANNEL, Serving, texts, until
from tests.slack.emulator import SlackEmulator


async def _served_serial(port: int, domain: str, root: Path) -> int:
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", domain,
        "-CAfile", str(root), "-verify_return_error",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    text = out.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in text, text[-500:]
    proc = await asyncio.create_subprocess_exec(
        "openssl", "x509", "-noout", "-serial",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    shown, _ = await proc.communicate(out)
    match = re.search(r"serial=([0-9A-F]+)", shown.decode())
    assert match is not None, text[-500:]
    return int(match.group(1), 16)


async def _due_in_ten_days(settings: Settings) -> None:
    """Every certificate's expiry moved to ten days from now, as the database records it, and
    its renewal due now."""
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.begin() as db:
            values = {"not_after": utcnow() + timedelta(days=10), "renew_at": utcnow()}
            await db.execute(update(Certificate).values(**values))
    finally:
        await engine.dispose()


@pytest.mark.docker
async def test_a_certificate_from_acme_is_shown_renewed_by_serve_and_a_failure_told(
    routed: Settings, slack: SlackEmulator, tmp_path: Path, make_source: MakeSource,
    docker: DockerClient,
) -> None:  # fmt: skip
    prod = (await make_source(web_nodes=1, db_nodes=0)).name
    tls_port = _free_port()
    http_port = int(routed.router_bind.rpartition(":")[2])
    settings = routed.model_copy(update={"router_tls_bind": f"127.0.0.1:{tls_port}"})
    async with contextlib.AsyncExitStack() as acme_server:
        pebble = await acme_server.enter_async_context(
            run_pebble(tmp_path / "pebble", http_port=http_port)
        )
        root = await pebble.issuing_root(tmp_path / "root.pem")
        acme = {
            "CLONEBOT_ROUTER_TLS_BIND": f"127.0.0.1:{tls_port}",
            "CLONEBOT_ACME_DIRECTORY": pebble.directory,
            "CLONEBOT_ACME_CA_BUNDLE": str(pebble.ca_bundle),
            "CLONEBOT_ACME_EMAIL": "ops@example.com",
            "CLONEBOT_ACME_RENEW_CHECK": "0.5",  # serve looks every half second
        }

        def cli(*args: str, code: int = 0, without_acme: bool = False) -> str:
            env = clonebot_env(settings) | {"COLUMNS": "200"}
            env |= {"CLONEBOT_ROUTER_TLS_BIND": f"127.0.0.1:{tls_port}"} if without_acme else acme
            done = run_cli(list(args), env=env)
            assert done.returncode == code, (args, done.stdout, done.stderr)
            # one line, however the console wraps it
            return " ".join((done.stdout + done.stderr).split())

        async def shown() -> dict[str, str]:
            found = await asyncio.to_thread(cli, "cert", "show", "shop.test", "--json")
            return json.loads(found)  # type: ignore[no-any-return]

        async with Serving(settings, slack, tmp_path, **acme) as bot:
            await asyncio.to_thread(cli, "domain", "add", prod, "shop.test", "--as", OWNER)
            added = await asyncio.to_thread(
                cli, "cert", "add", "shop.test", "--acme", "--as", OWNER
            )
            assert "issued by ACME, renewed from" in added and "HAProxy serves it" in added
            issued = await shown()
            first = int(issued["serial"], 16)
            assert issued["source"] == "acme" and issued["renews_at"]
            assert await _served_serial(tls_port, "shop.test", root) == first
            # asked again before it is due: refused, the ACME server spared
            again = await asyncio.to_thread(
                cli, "cert", "add", "shop.test", "--acme", "--as", OWNER, code=2
            )
            assert f"serve` renews it from {issued['renews_at'][:10]}" in again
            assert "no new one ordered (an admin may force one with --force)" in again
            # where the ACME server is not set, it is said not to be renewed
            plain = await asyncio.to_thread(cli, "cert", "show", "shop.test", without_acme=True)
            assert "renewal: not renewed: CLONEBOT_ACME_DIRECTORY is not set" in plain

            await bot.command(OWNER, "/env", "cert shop.test")
            reply = await bot.reply(lambda r: "shop.test" in r["text"])
            assert f"issued by ACME for <@{OWNER}>" in reply["text"]
            assert f"renewed from {issued['renews_at'][:10]}" in reply["text"]

            # the environment's internal domain: from ACME, for whoever may move its traffic
            internal = f"{prod}.{BASE_DOMAIN}"
            stranger = await asyncio.to_thread(
                cli, "cert", "add", internal, "--acme", "--as", "USOMEONE1", code=2
            )
            assert stranger.startswith("refused:"), stranger
            added = await asyncio.to_thread(cli, "cert", "add", internal, "--acme", "--as", OWNER)
            assert "issued by ACME, renewed from" in added and "HAProxy serves it" in added
            own = json.loads(await asyncio.to_thread(cli, "cert", "show", internal, "--json"))
            assert await _served_serial(tls_port, internal, root) == int(own["serial"], 16)

            # ten days before it expires, serve's next check renews it
            await _due_in_ten_days(settings)
            served = {first}
            for _ in range(100):
                served.add(await _served_serial(tls_port, "shop.test", root))
                if len(served) > 1:
                    break
                await asyncio.sleep(0.2)
            assert len(served) == 2, "serve renewed it"
            assert int((await shown())["serial"], 16) in served - {first}
            await until(lambda: "renewed: serial" in bot.log.read_text(), what="the log says so")

            # the ACME server gone, the next renewal fails: told to who asked and to the team
            await acme_server.aclose()
            await _due_in_ten_days(settings)

            def told(channel: str) -> bool:
                return any(
                    "shop.test* could not be renewed" in text
                    for text in texts(slack, "chat.postMessage", channel)
                )

            await until(lambda: told(OWNER) and told(TEAM_CHANNEL), what="told", timeout_s=20)
    log = (tmp_path / "serve.log").read_text()
    assert "PRIVATE KEY" not in log and "BEGIN" not in log, "no key in the log"
    assert "not renewed: the ACME server cannot be reached" in log
    # through the runtime API (tests/services/test_acme.py counts the workers: here, other
    # tests' environments on the engine reload serve's HAProxy now and then)
    assert "reloading HAProxy for" not in log

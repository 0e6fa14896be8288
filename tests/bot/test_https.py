"""HTTPS through `clonebot serve`'s own HAProxy: a certificate added from the command line is
served for its domain, by SNI, and stays with the domain through a swap from Slack. Real
clients (curl, openssl s_client) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from services.docker import DockerClient
from services.settings import Settings
from tests.conftest import OWNER, MakeSource, _free_port, exec_output
from tests.serving import Serving, cli
from tests.slack.emulator import SlackEmulator
from tests.tls import LocalCA


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
    return proc.returncode or 0, out.decode(errors="replace")


async def _https(port: int, domain: str, ca: Path, *, within_s: float = 15) -> str:
    """The body ``https://domain/`` answers through the router, checked against ``ca``."""
    last = ""
    for _ in range(int(within_s * 5)):
        code, last = await _run(
            "curl", "-sS", "--fail", "--max-time", "3", "--cacert", str(ca),
            "--resolve", f"{domain}:{port}:127.0.0.1", f"https://{domain}:{port}/",
        )  # fmt: skip
        if code == 0:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"https://{domain}:{port}/ never answered: {last}")


async def _serial(port: int, domain: str) -> int:
    _, shown = await _run(
        "sh", "-c",
        f"openssl s_client -connect 127.0.0.1:{port} -servername {domain} </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial",
    )  # fmt: skip
    match = re.search(r"serial=([0-9A-F]+)", shown)
    assert match is not None, shown
    return int(match.group(1), 16)


async def test_a_certificate_added_from_the_shell_is_served_and_follows_a_swap(
    routed: Settings, slack: SlackEmulator, tmp_path: Path, make_source: MakeSource,
    docker: DockerClient,
) -> None:  # fmt: skip
    prod = (await make_source(web_nodes=1, db_nodes=0)).name
    green = f"{prod}-green"
    tls_port = _free_port()
    ca = LocalCA()
    ca_file = ca.write(tmp_path / "ca.pem")
    leaf = ca.issue("shop.test")
    (tmp_path / "shop.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "shop.key").write_bytes(leaf.key_pem)
    extra = {"CLONEBOT_ROUTER_TLS_BIND": f"127.0.0.1:{tls_port}"}
    settings = routed.model_copy(update={"router_tls_bind": f"127.0.0.1:{tls_port}"})
    async with Serving(settings, slack, tmp_path, **extra) as bot:
        cli(bot.settings, "clone", prod, green, "--as", OWNER)
        await exec_output(docker, f"{green}-web-1", "echo green > /www/index.html")
        cli(bot.settings, "domain", "add", prod, "shop.test", "--as", OWNER)
        added = cli(
            bot.settings, "cert", "add", "shop.test", "--cert", str(tmp_path / "shop.pem"),
            "--key", str(tmp_path / "shop.key"), "--as", OWNER,
        )  # fmt: skip
        assert "shop.test" in added

        assert await _https(tls_port, "shop.test", ca_file) == f"{prod} web 1\n"
        assert await _serial(tls_port, "shop.test") == leaf.cert.serial_number

        await bot.command(OWNER, "/env", f"swap {prod} {green}")
        await bot.reply(lambda r: "swapped their domains" in r["text"])
        for _ in range(50):
            if await _https(tls_port, "shop.test", ca_file) == "green\n":
                break
            await asyncio.sleep(0.1)
        assert await _https(tls_port, "shop.test", ca_file) == "green\n"
        assert await _serial(tls_port, "shop.test") == leaf.cert.serial_number, "same cert"
        assert "BEGIN" not in (tmp_path / "serve.log").read_text(), "no key in the log"

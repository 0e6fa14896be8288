"""`/env domain https …` through `clonebot serve`'s own HAProxy: a domain's redirect to HTTPS
and its HSTS set from Slack, served at once, shown with the domain's certificate; bad words
and strangers get a short answer. Real curl on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.settings import Settings
from tests.conftest import OWNER, MakeSource, _free_port
from tests.serving import STRANGER, Bot, Serving, cli
from tests.slack.emulator import SlackEmulator
from tests.tls import LocalCA


async def _head(bot: Bot, url: str) -> str:
    """The head of the router's answer to ``url`` (http://shop.test/…), from curl."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", "/dev/null", "-D", "-", "--noproxy", "*", "--max-time", "5",
        "--connect-to", f"shop.test:80:127.0.0.1:{bot.settings.router_port}", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 0, out
    return out.decode()


async def test_a_domains_https_is_set_and_shown_from_slack(
    routed: Settings, slack: SlackEmulator, tmp_path: Path, make_source: MakeSource
) -> None:
    prod = (await make_source(web_nodes=1, db_nodes=0)).name
    leaf = LocalCA().issue("shop.test")
    (tmp_path / "shop.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "shop.key").write_bytes(leaf.key_pem)
    tls = f"127.0.0.1:{_free_port()}"
    settings = routed.model_copy(update={"router_tls_bind": tls})
    async with Serving(settings, slack, tmp_path, CLONEBOT_ROUTER_TLS_BIND=tls) as bot:

        async def ask(user: str, text: str) -> str:
            await bot.command(user, "/env", text)
            return str((await bot.reply(lambda r: True))["text"])

        cli(bot.settings, "domain", "add", prod, "shop.test", "--as", OWNER)
        cli(
            bot.settings, "cert", "add", "shop.test", "--cert", str(tmp_path / "shop.pem"),
            "--key", str(tmp_path / "shop.key"), "--as", OWNER,
        )  # fmt: skip
        assert await ask(OWNER, "domain https shop.test") == (
            "*shop.test*: redirect to HTTPS off · HSTS off."
        )
        assert "200" in (await _head(bot, "http://shop.test/")).splitlines()[0]

        said = await ask(OWNER, "domain https shop.test redirect hsts=600")
        assert said == "*shop.test*: redirect to HTTPS on · HSTS `max-age=600`."
        head = await _head(bot, "http://shop.test/x?y=1")
        assert "307" in head.splitlines()[0]
        assert "location: https://shop.test/x?y=1" in head.lower()
        shown = await ask(OWNER, "cert shop.test")
        assert shown.endswith("*shop.test*: redirect to HTTPS on · HSTS `max-age=600`.")

        assert (await ask(OWNER, "domain https shop.test sideways")).startswith(
            "Usage: `/env domain add|remove ENV DOMAIN · https DOMAIN"
        )
        for word in ("soon", "²", "٣", "-1", "1_000"):  # ASCII digits alone
            said = await ask(OWNER, f"domain https shop.test hsts={word}")
            assert said.startswith("`hsts="), said
            assert "whole seconds" in said and "Usage: `/env domain" in said, said
        assert "over a year" in await ask(OWNER, "domain https shop.test hsts=31536001")
        assert "belongs to" in await ask(STRANGER, "domain https shop.test no-redirect")
        head = await _head(bot, "http://shop.test/")
        assert "307" in head.splitlines()[0], "unchanged"

"""Domains, swap, split and failover: the database's routes served by a real HAProxy."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from services.access import Request
from services.context import Services, open_services
from services.errors import BadRequest, Forbidden
from services.haproxy import EmbeddedHAProxy, RouterFiles, render_config
from services.router import apply_routes, router_state
from services.routing import add_domain, set_failover, set_split, swap_domains, validate_domain
from services.settings import Settings
from tests.conftest import OWNER, MakeSource


@pytest.mark.parametrize(
    ("domain", "ascii_form"),
    [("Shop.Example.com", "shop.example.com"), ("bücher.example", "xn--bcher-kva.example")],
)
def test_domains_are_normalised(domain: str, ascii_form: str) -> None:
    assert validate_domain(domain) == ascii_form


@pytest.mark.parametrize(
    "domain", ["localhost", "-shop.example", "sh_op.example", "a..b", "x" * 64 + ".io"]
)
def test_malformed_domains_are_refused(domain: str) -> None:
    with pytest.raises(BadRequest, match="is not a valid domain name"):
        validate_domain(domain)


@dataclass
class Router:
    svc: Services
    files: RouterFiles
    bind: str

    async def get(self, session: aiohttp.ClientSession, host: str) -> str:
        async with session.get(f"http://{self.bind}/", headers={"Host": host}) as resp:
            assert resp.status == 200, (host, resp.status)
            return (await resp.text()).strip()

    async def apply(self) -> None:
        assert await apply_routes(self.svc, files=self.files, bind=self.bind)
        await asyncio.sleep(0.3)  # a structural change is a reload: let the new worker settle


@pytest.fixture
async def router(settings: Settings, tmp_path: Path) -> AsyncIterator[Router]:
    """clonebot's services (SQLite) with an HAProxy started from the routes, as serve does."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        bind = f"127.0.0.1:{sock.getsockname()[1]}"
    files = RouterFiles(tmp_path / "router")
    async with open_services(settings) as svc:
        haproxy = EmbeddedHAProxy(files=files)
        state = await router_state(svc)
        config = render_config(files=files, bind=bind, backends=state.backends)
        await haproxy.start(config=config, hosts=state.hosts)
        try:
            yield Router(svc, files, bind)
        finally:
            await haproxy.stop()


async def test_swap_split_and_stickiness_move_real_traffic(
    router: Router, make_source: MakeSource
) -> None:
    blue, green = (await make_source(web_nodes=1)).name, (await make_source(web_nodes=1)).name
    me = Request(OWNER)
    await add_domain(router.svc, me, env=blue, domain="shop.test")
    await add_domain(router.svc, me, env=green, domain="beta.shop.test")
    await router.apply()
    async with aiohttp.ClientSession() as session:
        # every environment answers at its internal domain as soon as it exists
        assert await router.get(session, f"{blue}.clonebot.test") == f"{blue} web 1"
        assert await router.get(session, "shop.test") == f"{blue} web 1"

        await swap_domains(router.svc, me, first=blue, second=green)
        await router.apply()
        assert await router.get(session, "shop.test") == f"{green} web 1"
        assert await router.get(session, "beta.shop.test") == f"{blue} web 1"

        await set_split(
            router.svc, me, domain="shop.test", weights={green: 90, blue: 10}, sticky=False
        )
        await router.apply()
        answers = Counter([await router.get(session, "shop.test") for _ in range(2000)])
        # binomial(2000, 0.1): mean 200, sd 13.4; 4.5 sd either side
        assert 140 <= answers[f"{blue} web 1"] <= 260, answers
        assert answers[f"{green} web 1"] + answers[f"{blue} web 1"] == 2000

    await set_split(router.svc, me, domain="shop.test", weights={green: 50, blue: 50}, sticky=True)
    await router.apply()
    sides = set()
    for _ in range(8):  # eight visitors, each with a cookie jar of their own
        # unsafe: the jar must keep cookies although the URL names 127.0.0.1, not shop.test
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as visitor:
            seen = {await router.get(visitor, "shop.test") for _ in range(20)}
            assert len(seen) == 1, "a visitor stays on one side"
            sides |= seen
    assert len(sides) == 2, "new visitors are shared between both sides (round robin)"


async def test_failover_follows_the_primarys_health(
    router: Router, make_source: MakeSource
) -> None:
    primary, backup = (await make_source(web_nodes=1)).name, (await make_source(web_nodes=1)).name
    me = Request(OWNER)
    await add_domain(router.svc, me, env=primary, domain="app.test")
    await set_failover(router.svc, me, domain="app.test", primary=primary, backup=backup)
    await router.apply()
    docker = router.svc.docker
    async with aiohttp.ClientSession() as session:
        assert await router.get(session, "app.test") == f"{primary} web 1"
        await docker.stop_container(f"{primary}_web_1", timeout_s=1)
        assert await _eventually(router, session, "app.test", f"{backup} web 1")
        await docker.start_container(f"{primary}_web_1")
        assert await _eventually(router, session, "app.test", f"{primary} web 1")


async def _eventually(router: Router, session: aiohttp.ClientSession, host: str, page: str) -> bool:
    """The page is served within 15 s (health checks run every second)."""
    for _ in range(150):
        try:
            if await router.get(session, host) == page:
                return True
        except (AssertionError, aiohttp.ClientError):
            pass
        await asyncio.sleep(0.1)
    return False


async def test_bad_traffic_requests_change_nothing(router: Router, make_source: MakeSource) -> None:
    blue, green = (await make_source(web_nodes=1)).name, (await make_source(web_nodes=1)).name
    me = Request(OWNER)
    await add_domain(router.svc, me, env=blue, domain="shop.test")
    before = await router_state(router.svc)

    with pytest.raises(BadRequest, match="shop.test is already bound to " + blue):
        await add_domain(router.svc, me, env=green, domain="shop.test")
    with pytest.raises(BadRequest, match="weights are whole numbers from 0 to 100"):
        await set_split(
            router.svc, me, domain="shop.test", weights={blue: 120, green: 0}, sticky=False
        )
    with pytest.raises(BadRequest, match="at least one weight must be above 0"):
        await set_split(
            router.svc, me, domain="shop.test", weights={blue: 0, green: 0}, sticky=False
        )
    with pytest.raises(BadRequest, match="with itself"):
        await swap_domains(router.svc, me, first=blue, second=blue)
    with pytest.raises(Forbidden, match=f"{blue} belongs to <@{OWNER}>"):
        await swap_domains(router.svc, Request("USTRANGER"), first=blue, second=green)

    assert await router_state(router.svc) == before

"""Domains, swap, split and failover: the database's routes served by a real HAProxy."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.access import Request
from services.context import Services, open_services
from services.environments import HTTP_PORT, NUMBER, PROJECT, SERVICE
from services.errors import BadRequest, Forbidden
from services.settings import Settings
from services.traffic.haproxy import (
    EmbeddedHAProxy,
    RouterFailed,
    RouterFiles,
    RuntimeAPI,
    locked,
    render_config,
    worker_pid,
)
from services.traffic.router import (
    apply_bindings,
    apply_routes,
    env_backend,
    latest_nodes,
    router_state,
    swap_routes,
    web_nodes,
)
from services.traffic.routing import (
    add_domain,
    set_failover,
    set_split,
    swap_domains,
    validate_domain,
)
from storage import repositories as repo
from storage.models import DomainBinding, utcnow
from tests.conftest import IMAGE, OWNER, WEB, MakeSource, compose_labels, exec_output


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
        # a connection of its own: a kept-alive one may still be on the worker a reload
        # replaced, which serves it the old routes until it closes (a loaded machine's
        # old worker took longer than apply()'s pause)
        headers = {"Host": host, "Connection": "close"}
        async with session.get(f"http://{self.bind}/", headers=headers) as resp:
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
    assert settings.router_dir is not None
    files = RouterFiles(settings.router_dir)  # the router a front door's apply_bindings finds
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


async def test_a_swap_changes_the_database_and_the_map_without_reading_docker(
    router: Router, make_source: MakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A swap must reach HAProxy in milliseconds whatever the load: the permission check reads
    the records of environments the router serves, the map moves in one atomic step, and
    neither waits on Docker; an environment the router does not serve yet is looked up."""
    blue, green = (await make_source(web_nodes=1)).name, (await make_source(web_nodes=1)).name
    me = Request(OWNER)
    await add_domain(router.svc, me, env=blue, domain="shop.test")
    await add_domain(router.svc, me, env=green, domain="beta.shop.test")
    await router.apply()
    worker = await worker_pid(RuntimeAPI(router.files.api))
    listings = 0
    list_containers = router.svc.docker.list_containers

    async def counted(**kwargs: Any) -> list[dict[str, Any]]:
        nonlocal listings
        listings += 1
        return await list_containers(**kwargs)

    monkeypatch.setattr(router.svc.docker, "list_containers", counted)
    with pytest.raises(Forbidden):
        await swap_routes(router.svc, Request("USTRANGER1"), first=blue, second=green)
    assert await swap_routes(router.svc, me, first=blue, second=green)
    assert listings == 0
    async with aiohttp.ClientSession() as session:
        assert await router.get(session, "shop.test") == f"{green} web 1"
        assert await router.get(session, "beta.shop.test") == f"{blue} web 1"
        assert await worker_pid(RuntimeAPI(router.files.api)) == worker, "no reload"
        async with router.svc.sessions() as db:
            entries = await repo.list_audit(db)
        refused = [e for e in entries if not e.allowed]
        assert [(e.actor, e.action) for e in refused] == [("USTRANGER1", "move traffic")]
        [swapped] = [e for e in entries if e.action == "swap"]
        who = (swapped.actor, swapped.environment, swapped.detail)
        assert who == (OWNER, blue, {"with": green})
        assert timedelta(0) <= utcnow() - swapped.at < timedelta(minutes=1)

        # a domain bound alone changes the map alone
        await add_domain(router.svc, me, env=green, domain="green.shop.test")
        assert await apply_bindings(router.svc)
        assert await router.get(session, "green.shop.test") == f"{green} web 1"
        assert listings == 0
        assert await worker_pid(RuntimeAPI(router.files.api)) == worker, "no reload"

        # made after the last apply: the map cannot say where it goes, Docker is asked
        third = (await make_source(web_nodes=1)).name
        await add_domain(router.svc, me, env=third, domain="new.shop.test")
        assert await swap_routes(router.svc, me, first=third, second=blue)
        await asyncio.sleep(0.3)  # a new backend is a reload: let the new worker settle
        assert await router.get(session, "new.shop.test") == f"{blue} web 1"
        assert await router.get(session, "beta.shop.test") == f"{third} web 1"
        assert listings > 0


# the web node answers 500 to every request, then its page again (busybox httpd runs
# cgi-bin/index.cgi for a directory without index.html)
BREAK = (
    "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho \"Status: 500 Broken\"\\necho\\n' "
    "> /www/cgi-bin/index.cgi && chmod +x /www/cgi-bin/index.cgi && rm /www/index.html"
)
MEND = 'echo "$PAGE" > /www/index.html && rm /www/cgi-bin/index.cgi'


@pytest.mark.slow
async def test_failover_moves_traffic_when_the_primary_stops_hangs_or_answers_5xx(
    router: Router, make_source: MakeSource
) -> None:
    primary, backup = [(await make_source(web_nodes=1, db_nodes=0)).name for _ in range(2)]
    me = Request(OWNER)
    await add_domain(router.svc, me, env=primary, domain="app.test")
    await set_failover(router.svc, me, domain="app.test", primary=primary, backup=backup)
    await router.apply()
    docker, node = router.svc.docker, f"{primary}_web_1"
    on_primary, on_backup = f"{primary} web 1", f"{backup} web 1"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=8)) as session:
        assert await _served_within(router, session, on_primary)

        # stopped, and the router told so (as serve's keeper does at once): still a server,
        # down, so the route stays and its backup serves
        await docker.stop_container(node, timeout_s=1)
        await router.apply()
        assert await _served_within(router, session, on_backup)
        state = await router_state(router.svc)
        [route] = [b for b in state.backends if b.name.endswith("app.test")]
        assert [(s.name, s.running) for s in route.servers] == [
            (f"{primary}-1", False), (f"{backup}-1", True),
        ]  # fmt: skip
        await docker.start_container(node)
        await router.apply()
        assert await _served_within(router, session, on_primary)

        # hung: a paused node accepts connections and never answers
        await docker.pause_container(node)
        try:
            assert await _served_within(router, session, on_backup)
        finally:
            await docker.unpause_container(node)
        assert await _served_within(router, session, on_primary)

        # broken: every answer a 500
        await exec_output(docker, node, BREAK)
        assert await _served_within(router, session, on_backup)
        await exec_output(docker, node, MEND)
        assert await _served_within(router, session, on_primary)


async def _served_within(
    router: Router, session: aiohttp.ClientSession, page: str, *, within_s: float = 20
) -> bool:
    """app.test answers ``page`` within ``within_s``, 20 times in a row, never with a 404
    (the route is there all along): requests one after another, at most 400."""
    deadline, in_a_row = time.monotonic() + within_s, 0
    for _ in range(400):
        try:
            async with session.get(f"http://{router.bind}/", headers={"Host": "app.test"}) as resp:
                status, text = resp.status, (await resp.text()).strip()
        except (aiohttp.ClientError, TimeoutError):
            status, text = 0, ""
        assert status != 404, "the route disappeared"
        in_a_row = in_a_row + 1 if (status, text) == (200, page) else 0
        if in_a_row == 20:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05 if in_a_row else 0.1)
    return False


async def test_bad_traffic_requests_change_nothing(router: Router, make_source: MakeSource) -> None:
    blue, green = (await make_source(web_nodes=1)).name, (await make_source(web_nodes=1)).name
    me = Request(OWNER)
    await add_domain(router.svc, me, env=blue, domain="shop.test")
    before = await _routes_of(router.svc, blue, green)

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

    assert await _routes_of(router.svc, blue, green) == before


async def test_nothing_under_the_base_domain_can_be_bound(
    router: Router, make_source: MakeSource
) -> None:
    prod, mine = [(await make_source(web_nodes=1, db_nodes=0)).name for _ in range(2)]
    before = await _routes_of(router.svc, prod, mine)
    for domain in [
        f"{prod}.clonebot.test", f"X.{prod}.Clonebot.Test.", "clonebot.test", "CLONEBOT.TEST.",
    ]:  # fmt: skip
        with pytest.raises(BadRequest, match=r"is under clonebot\.test, where clonebot gives"):
            await add_domain(router.svc, Request(OWNER), env=mine, domain=domain)
    assert await _routes_of(router.svc, prod, mine) == before


async def _routes_of(svc: Services, *envs: str) -> tuple[object, dict[str, str]]:
    """The router's state less other tests' environments (tests on other workers make and
    remove environments of their own meanwhile, each at its internal domain)."""
    state = await router_state(svc)
    ours = {env_backend(env) for env in envs}

    def others(backend: str) -> bool:
        return backend.startswith("env_") and backend not in ours

    backends = tuple(b for b in state.backends if not others(b.name))
    return backends, {host: b for host, b in state.hosts.items() if not others(b)}


async def test_a_binding_under_the_base_domain_already_stored_is_not_served(
    router: Router, make_source: MakeSource
) -> None:
    """One bound before the refusal existed: it never hides the environment it names."""
    prod, mine = [(await make_source(web_nodes=1, db_nodes=0)).name for _ in range(2)]
    await add_domain(router.svc, Request(OWNER), env=mine, domain="mine.test")  # recorded
    async with router.svc.sessions() as session:
        record = await repo.get_environment(session, mine)
        assert record is not None
        session.add(DomainBinding(domain=f"{prod}.clonebot.test", environment_id=record.id))
        await session.commit()
    with pytest.raises(BadRequest, match=r"is under clonebot\.test"):
        await set_failover(
            router.svc, Request(OWNER), domain=f"{prod}.clonebot.test", primary=mine, backup=prod
        )
    await router.apply()
    async with aiohttp.ClientSession() as session:
        assert await router.get(session, f"{prod}.clonebot.test") == f"{prod} web 1"


@pytest.mark.slow
async def test_a_hostile_environment_is_left_out_and_the_others_still_swap(
    router: Router, make_source: MakeSource
) -> None:
    """Labels are anyone's to write: a newline must not become a directive, two nodes with
    one number must not stop every other route."""
    blue, green = [(await make_source(web_nodes=1, db_nodes=0)).name for _ in range(2)]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        injected = f"127.0.0.1:{sock.getsockname()[1]}"
    evil = f"{blue}x"
    hostile = {
        "dup-1": compose_labels(f"{evil}1", "web", 1),
        "dup-2": compose_labels(f"{evil}1", "web", 1),
        "project": compose_labels(f"{evil}2\n    bind {injected}", "web", 1),
        "service": compose_labels(f"{evil}3", f"web\n    bind {injected}", 1),
        "number": compose_labels(f"{evil}4", "web", 1) | {NUMBER: "1 #"},
        "port": {
            **compose_labels(f"{evil}5", "web", 1),
            HTTP_PORT: f"80\nfrontend x\n bind {injected}",
        },
        # not hostile: two web layers, each with its node 1, are two servers
        "web": compose_labels(f"{evil}6", "web", 1),
        "api": compose_labels(f"{evil}6", "api", 1),
    }
    docker, made = router.svc.docker, []
    try:
        for key, labels in hostile.items():
            config = {
                "Image": IMAGE,
                "Cmd": ["sh", "-c", WEB],
                "Labels": {HTTP_PORT: "80", **labels},
                "Env": [f"PAGE={key}"],
            }
            made.append(await docker.create_container(name=f"{evil}-{key}", config=config))
            await docker.start_container(made[-1])
        me = Request(OWNER)
        await add_domain(router.svc, me, env=blue, domain="shop.test")
        await router.apply()
        await swap_domains(router.svc, me, first=blue, second=green)
        await router.apply()
        async with aiohttp.ClientSession() as session:
            assert await router.get(session, "shop.test") == f"{green} web 1"
            assert await router.get(session, f"{blue}.clonebot.test") == f"{blue} web 1"
            pages = {await router.get(session, f"{evil}6.clonebot.test") for _ in range(4)}
            assert pages == {"web", "api"}
        state = await router_state(router.svc)
        [two] = [b for b in state.backends if b.name == f"env_{evil}6"]
        assert [s.name for s in two.servers] == [f"{evil}6-api-1", f"{evil}6-web-1"]
        left_out = state.left_out
        assert left_out == {
            f"{evil}1": f"two web nodes are numbered 1 ({NUMBER})",
            repr(f"{evil}2\n    bind {injected}"): (
                f"{PROJECT}='{evil}2\\n    bind {injected}' is not a Compose project name"
            ),
            f"{evil}3": f"{SERVICE}='web\\n    bind {injected}' is not a Compose service name",
            f"{evil}4": f"{NUMBER}='1 #' is not a container number",
            f"{evil}5": f"{HTTP_PORT}='80\\nfrontend x\\n bind {injected}' is not a port (1-65535)",
        }
        assert f"bind {injected}" not in router.files.config.read_text()
        host, port = injected.split(":")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, int(port))
    finally:
        for cid in made:
            await docker.remove_container(cid)


async def test_an_older_container_listing_never_overwrites_a_newer_one(
    router: Router, make_source: MakeSource
) -> None:
    """Docker is listed before the router's lock is taken (a swap waits for the lock, not for
    a listing): an apply holding an older listing than the last one applied lists again."""
    older = await web_nodes(router.svc)
    made = (await make_source(web_nodes=1)).name
    await router.apply()  # lists after the clone was made, and records it
    async with locked(router.files):
        latest = await latest_nodes(router.svc, files=router.files, nodes=older)
    assert made not in older.envs
    assert made in latest.envs
    async with locked(router.files):  # a listing newer than the last applied is kept as is
        assert await latest_nodes(router.svc, files=router.files, nodes=latest) == latest


async def test_a_swap_haproxy_cannot_be_told_of_is_made_and_not_reported_failed(
    router: Router, make_source: MakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the database has the swap, a front door must not say it failed: a person would
    swap again, which swaps back. HAProxy refusing the map is logged; the keeper applies it."""
    blue, green = (await make_source(web_nodes=1)).name, (await make_source(web_nodes=1)).name
    me = Request(OWNER)
    await add_domain(router.svc, me, env=blue, domain="shop.test")
    await router.apply()

    async def refused(self: RuntimeAPI, path: Path, entries: Any) -> None:
        raise RouterFailed("commit map: refused (injected)")

    with monkeypatch.context() as patched:
        patched.setattr(RuntimeAPI, "replace_map", refused)
        assert await swap_routes(router.svc, me, first=blue, second=green) is False
    async with router.svc.sessions() as db:
        binding = await db.get(DomainBinding, "shop.test")
        assert binding is not None
        owner = await repo.get_environment(db, green)
        assert owner is not None and binding.environment_id == owner.id
    await router.apply()  # what the router keeper does next
    async with aiohttp.ClientSession() as session:
        assert await router.get(session, "shop.test") == f"{green} web 1"

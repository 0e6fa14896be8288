"""Traffic through the router's HTTPS, with real clients against a real HAProxy on 127.0.0.1:
a domain's redirect of plain HTTP and its HSTS (they and its certificate stay with the domain
through a swap), HTTP/2 negotiated by ALPN, and WebSockets over HTTP and HTTPS to a web node
that speaks them (tests/ws_echo.py), one opened before a swap staying with its environment."""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from services.access import Request
from services.context import Services, open_services
from services.docker import DockerClient
from services.environments import OWNER as OWNER_LABEL
from services.errors import BadRequest, Forbidden
from services.ownership import share_environment
from services.settings import Settings
from services.traffic.certificates import add_certificate
from services.traffic.domain_https import set_https
from services.traffic.haproxy import EmbeddedHAProxy, RouterFiles, RuntimeAPI, worker_pid
from services.traffic.router import apply_bindings, apply_routes, router_config, router_state
from services.traffic.routing import add_domain, remove_domain, set_split, swap_domains
from storage.models import AuditEntry
from tests.cli import clonebot
from tests.conftest import ADMIN, BASE_DOMAIN, OWNER, MakeSource, compose_labels, remove_projects
from tests.serving import STRANGER, cli
from tests.tls import LocalCA, run_tool, served_serial

ECHO_IMAGE = "clonebot-test/python:latest"  # scripts/build-test-images.sh makes it
ECHO_SOURCE = (Path(__file__).parents[1] / "ws_echo.py").read_text()
ACME_PATH = "/.well-known/acme-challenge/a-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: str


@dataclass
class Router:
    """clonebot's services beside an HAProxy listening for HTTP and HTTPS on 127.0.0.1."""

    svc: Services
    settings: Settings
    files: RouterFiles
    http_port: int
    tls_port: int
    ca_file: Path

    async def apply(self, *, own: bool = True) -> None:
        """As ``serve`` does (``own``), or as a front door beside it does."""
        bind = self.settings.router_bind if own else None
        assert await apply_routes(self.svc, files=self.files, bind=bind)
        await asyncio.sleep(0.3)  # a certificate's change is a reload: let the worker settle

    async def get(self, url: str, *extra: str) -> Answer:
        """``url`` (http:// or https://, on ports 80 and 443) as curl fetches it, the names
        resolved to the router's ports: the Host header is the name alone, as a browser's."""
        host = re.match(r"https?://([^/:]+)", url)
        assert host is not None
        name = host.group(1)
        shown = await run_tool(
            "curl", "-sS", "-i", "--noproxy", "*", "--max-time", "5", "--cacert",
            str(self.ca_file), "--connect-to", f"{name}:80:127.0.0.1:{self.http_port}",
            "--connect-to", f"{name}:443:127.0.0.1:{self.tls_port}", *extra, url,
        )  # fmt: skip
        head, rest = "", shown
        while rest.startswith("HTTP/"):  # each answer's head (several with -L), then the body
            head, _, rest = rest.partition("\r\n\r\n")
        status, *fields = head.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        return Answer(int(status.split()[1]), headers, rest.strip())

    async def worker(self) -> str | None:
        """The pid of HAProxy's worker: another one after a reload."""
        return await worker_pid(RuntimeAPI(self.files.api))

    async def serial(self, servername: str) -> int:
        return await served_serial(self.tls_port, servername)

    async def certify(self, ca: LocalCA, domain: str) -> int:
        """Give ``domain`` a certificate of the test CA, applied: its serial."""
        leaf = ca.issue(domain)
        await add_certificate(
            self.svc, Request(OWNER), domain=domain, cert_pem=leaf.cert_pem, key_pem=leaf.key_pem
        )
        await self.apply()
        return int(leaf.cert.serial_number)


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture
async def router(routed: Settings, tmp_path: Path, ca: LocalCA) -> AsyncIterator[Router]:
    tls_port = _free_port()
    settings = routed.model_copy(update={"router_tls_bind": f"127.0.0.1:{tls_port}"})
    assert settings.router_dir is not None
    files = RouterFiles(settings.router_dir)
    async with open_services(settings) as svc:
        haproxy = EmbeddedHAProxy(files=files)
        state = await router_state(svc)
        config, tls = await router_config(svc, files=files, state=state, bind=settings.router_bind)
        assert tls is not None
        await haproxy.start(config=config, hosts=state.hosts, crt_list=tls.crt_list)
        try:
            yield Router(
                svc, settings, files, settings.router_port, tls_port, ca.write(tmp_path / "ca.pem")
            )
        finally:
            await haproxy.stop()


MakeEcho = Callable[[], Awaitable[str]]


@pytest.fixture
async def make_echo(docker: DockerClient) -> AsyncIterator[MakeEcho]:
    """Factory: an environment whose one web node speaks WebSocket (``tests/ws_echo.py``)."""
    made: set[str] = set()

    async def make() -> str:
        name = f"t{secrets.token_hex(3)}"
        made.add(name)
        network = f"{name}_default"
        await docker.create_network(
            {"Name": network, "Labels": {"com.docker.compose.project": name}}
        )
        labels = {**compose_labels(name, "web", 1), "clonebot.http.port": "8000"}
        config = {
            "Image": ECHO_IMAGE,
            "Cmd": ["python3", "-c", ECHO_SOURCE],
            "Env": [f"NAME={name}"],
            "Labels": {OWNER_LABEL: OWNER, **labels},
            "HostConfig": {"NetworkMode": network, "Init": True},
            "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": ["web"]}}},
        }
        await docker.start_container(
            await docker.create_container(name=f"{name}_web_1", config=config)
        )
        return name

    try:
        yield make
    finally:
        await remove_projects(docker, made)


async def test_redirect_and_hsts_stay_with_their_domain_through_a_swap(
    router: Router, make_source: MakeSource, ca: LocalCA
) -> None:
    me, svc = Request(OWNER), router.svc
    blue, green = [(await make_source(web_nodes=1, db_nodes=0)).name for _ in range(2)]
    await add_domain(svc, me, env=blue, domain="shop.test")
    await add_domain(svc, me, env=green, domain="beta.test")
    await router.apply()
    plain = await router.get("http://shop.test/")
    assert (plain.status, plain.body) == (200, f"{blue} web 1"), "off by default"

    # asked before the domain has a certificate: kept, not acted on (HTTPS would not be its)
    state = await set_https(svc, me, domain="shop.test", redirect=True, hsts=True)
    assert (state.redirect, state.hsts_max_age, state.in_effect) == (True, 31_536_000, False)
    assert (await router.get("http://shop.test/")).status == 200
    shop_serial = await router.certify(ca, "shop.test")
    beta_serial = await router.certify(ca, "beta.test")

    moved = await router.get("http://shop.test/a/b?c=1&d=2")
    # 307: asked again each time (a 301 is kept by browsers for good), a POST kept a POST
    assert (moved.status, moved.headers["location"]) == (307, "https://shop.test/a/b?c=1&d=2")
    # ACME's HTTP-01 challenges are plain HTTP by nature: never redirected
    assert (await router.get(f"http://shop.test{ACME_PATH}")).status == 404  # the node's own
    secure = await router.get("https://shop.test/")
    assert (secure.status, secure.body) == (200, f"{blue} web 1")
    assert secure.headers["strict-transport-security"] == "max-age=31536000"
    assert "strict-transport-security" not in (await router.get("http://beta.test/")).headers
    followed = await router.get("http://shop.test/", "-L")
    assert (followed.status, followed.body) == (200, f"{blue} web 1"), "curl follows it"
    # a domain that asked for neither: plain HTTP served, no HSTS
    assert (await router.get("http://beta.test/")).body == f"{green} web 1"
    assert "strict-transport-security" not in (await router.get("https://beta.test/")).headers

    await swap_domains(svc, me, first=blue, second=green)
    await router.apply(own=False)  # as a front door beside `serve` applies a swap
    assert (await router.get("http://shop.test/")).status == 307, "the redirect stays"
    secure = await router.get("https://shop.test/")
    assert (secure.body, secure.headers["strict-transport-security"]) == (
        f"{green} web 1",
        "max-age=31536000",
    )
    # each certificate stays with its domain, both ways, while the pages change sides
    assert (await router.serial("shop.test"), await router.serial("beta.test")) == (
        shop_serial,
        beta_serial,
    )
    assert (await router.get("https://beta.test/")).body == f"{blue} web 1"
    assert (await router.get("http://beta.test/")).status == 200

    # from the command line, as a person beside `serve`: at once, without a reload
    worker = await router.worker()
    said = cli(
        router.settings, "domain", "https", "shop.test", "--no-redirect", "--hsts-max-age", "0",
        "--as", OWNER,
    )  # fmt: skip
    assert said.strip() == "shop.test: redirect off, HSTS max-age=0"
    assert (await router.get("http://shop.test/")).body == f"{green} web 1"
    assert (await router.get("https://shop.test/")).headers["strict-transport-security"] == (
        "max-age=0"  # browsers forget the domain's HSTS
    )
    assert await router.worker() == worker, "no reload"
    shown = cli(router.settings, "domain", "https", "shop.test", "--as", OWNER)
    assert shown.strip() == "shop.test: redirect off, HSTS max-age=0"
    certificate = cli(router.settings, "cert", "show", "shop.test")
    assert "https: redirect off, HSTS max-age=0" in certificate, "shown with its certificate"
    async with svc.sessions() as session:
        audit = (await session.scalars(select(AuditEntry).order_by(AuditEntry.id))).all()
    changes = [(a.environment, a.detail) for a in audit if a.action == "domain https"]
    assert changes == [
        (blue, {"domain": "shop.test", "redirect": "on", "hsts": "31536000"}),
        (green, {"domain": "shop.test", "redirect": "off", "hsts": "0"}),
    ]


async def test_a_redirect_waits_for_its_certificate_and_ends_with_the_binding(
    router: Router, make_source: MakeSource, ca: LocalCA
) -> None:
    """HAProxy redirects a domain once it serves the domain's own certificate (not once the
    file is there: the first one waits for a reload), and a domain bound to no environment
    is neither redirected nor given HSTS; an admin may turn off what it keeps."""
    me, svc = Request(OWNER), router.svc
    env = (await make_source(web_nodes=1, db_nodes=0)).name
    await add_domain(svc, me, env=env, domain="shop.test")
    await router.apply()
    leaf = ca.issue("shop.test")
    await add_certificate(svc, me, domain="shop.test", cert_pem=leaf.cert_pem, key_pem=leaf.key_pem)
    state = await set_https(svc, me, domain="shop.test", redirect=True, hsts_max_age=600)
    assert state.in_effect is False, "HAProxy serves the self-signed default for it still"
    assert (await router.get("http://shop.test/")).body == f"{env} web 1"
    await router.apply()  # the crt-list lists it: a reload
    moved = await router.get("http://shop.test/")
    assert (moved.status, moved.headers["location"]) == (307, "https://shop.test/")
    assert (await router.get("https://shop.test/")).headers["strict-transport-security"] == (
        "max-age=600"
    )

    # unbound as a front door does it (the host map alone changes): at once, no redirect
    await remove_domain(svc, me, env=env, domain="shop.test")
    assert await apply_bindings(svc)
    plain = await router.get("http://shop.test/")
    assert (plain.status, plain.body) == (404, "no environment here")
    assert "strict-transport-security" not in (await router.get("https://shop.test/")).headers
    await router.apply(own=False)
    assert router.files.redirects.read_text() == router.files.hsts.read_text() == ""
    with pytest.raises(Forbidden, match="bound to no environment: only an admin"):
        await set_https(svc, me, domain="shop.test", redirect=False)
    off = await set_https(svc, Request(ADMIN), domain="shop.test", redirect=False, hsts=False)
    assert (off.redirect, off.hsts_max_age, off.in_effect) == (False, None, True)


async def test_who_may_set_a_domains_https_and_what_is_refused(
    routed: Settings, make_source: MakeSource
) -> None:
    async with open_services(routed) as svc:
        env = (await make_source(web_nodes=1, db_nodes=0)).name
        await add_domain(svc, Request(OWNER), env=env, domain="shop.test")
        with pytest.raises(Forbidden):
            await set_https(svc, Request(STRANGER), domain="shop.test", redirect=True)
        refusals = {
            "say what to change": {},
            "is an internal domain": {"domain": f"{env}.{BASE_DOMAIN}", "redirect": True},
            "seconds from 0 to 2147483647": {"hsts_max_age": -1},
            "given with HSTS on": {"hsts": False, "hsts_max_age": 60},
        }
        for words, args in refusals.items():
            with pytest.raises(BadRequest, match=words):
                await set_https(svc, Request(OWNER), **{"domain": "shop.test", **args})
        # browsers keep HSTS for its max-age: past a year, an admin's choice
        with pytest.raises(Forbidden, match="over a year: only an admin may set one"):
            await set_https(svc, Request(OWNER), domain="shop.test", hsts_max_age=31_536_001)
        with pytest.raises(Forbidden, match="bound to no environment: only an admin"):
            await set_https(svc, Request(OWNER), domain="other.test", redirect=True)
        # nothing was changed by any of them; the refusals are audited
        async with svc.sessions() as session:
            audit = (await session.scalars(select(AuditEntry))).all()
        assert [a.action for a in audit if a.action == "domain https" and a.allowed] == []
        assert any(a.actor == STRANGER and not a.allowed for a in audit)
        assert any(a.actor == OWNER and not a.allowed and "year" in a.reason for a in audit)
        # typed as a person types it: ASCII digits alone ("٣" is a digit to int())
        typed = clonebot(
            "domain", "https", "shop.test", "--hsts-max-age", "٣", "--as", OWNER, settings=routed
        )
        assert typed.returncode == 2 and "whole seconds, like 31536000" in typed.stderr
        # without HAProxy running, the maps are kept for it: it reads them when it starts
        state = await set_https(svc, Request(OWNER), domain="shop.test", hsts_max_age=600)
        assert (state.redirect, state.hsts_max_age, state.in_effect) == (False, 600, None)
        again = await set_https(svc, Request(OWNER), domain="shop.test", hsts=True)
        assert again.hsts_max_age == 600, "HSTS on again keeps its max-age"
        admin = await set_https(svc, Request(ADMIN), domain="shop.test", hsts_max_age=63_072_000)
        assert admin.hsts_max_age == 63_072_000
        kept = await set_https(svc, Request(OWNER), domain="shop.test", redirect=True, hsts=True)
        assert kept.hsts_max_age == 63_072_000, "an admin's max-age kept, not set anew"


async def test_the_https_of_a_shared_domain_needs_each_environment_it_leads_to(
    routed: Settings, make_source: MakeSource
) -> None:
    """A split or a failover sends a domain's visitors to two environments: its redirect and
    HSTS are theirs too."""
    me, helper = Request(OWNER), Request("UHELPER1")
    async with open_services(routed) as svc:
        blue, green = [(await make_source(web_nodes=1, db_nodes=0)).name for _ in range(2)]
        await add_domain(svc, me, env=blue, domain="shop.test")
        await share_environment(svc, me, name=blue, user=helper.user, role="operator")
        assert (await set_https(svc, helper, domain="shop.test", redirect=True)).redirect
        await set_split(svc, me, domain="shop.test", weights={blue: 50, green: 50}, sticky=False)
        with pytest.raises(Forbidden, match=green):
            await set_https(svc, helper, domain="shop.test", redirect=False)
        await share_environment(svc, me, name=green, user=helper.user, role="operator")
        assert not (await set_https(svc, helper, domain="shop.test", redirect=False)).redirect


async def test_http2_and_websockets_reach_the_environment_and_stay_through_a_swap(
    router: Router, make_echo: MakeEcho, ca: LocalCA
) -> None:
    me, svc = Request(OWNER), router.svc
    blue, green = await make_echo(), await make_echo()
    await add_domain(svc, me, env=blue, domain="ws.test")
    await router.certify(ca, "ws.test")

    # HTTP/2, negotiated by ALPN, to a node that speaks HTTP/1.1
    two = await router.get("https://ws.test/", "--http2", "-w", "\r\n\r\n%{http_version}")
    assert two.status == 200 and two.body.split() == [blue, "web", "1", "2"]

    tls = ssl.create_default_context(cafile=str(router.ca_file))
    async with aiohttp.ClientSession() as session:

        async def connect(secure: bool) -> aiohttp.ClientWebSocketResponse:
            port = router.tls_port if secure else router.http_port
            url = f"{'wss' if secure else 'ws'}://127.0.0.1:{port}/"
            return await session.ws_connect(
                url, headers={"Host": "ws.test"}, ssl=tls if secure else False,
                server_hostname="ws.test" if secure else None, heartbeat=None,
            )  # fmt: skip

        async def echo(ws: aiohttp.ClientWebSocketResponse, text: str) -> str:
            await ws.send_str(text)
            return await asyncio.wait_for(ws.receive_str(), timeout=5)

        plain, secure = await connect(False), await connect(True)
        assert await echo(plain, "hello") == f"{blue}: hello"
        assert await echo(secure, "hello") == f"{blue}: hello"

        await swap_domains(svc, me, first=blue, second=green)
        await router.apply(own=False)
        # opened before the swap: still with the environment it was opened to, both ways
        assert await echo(plain, "still there?") == f"{blue}: still there?"
        assert await echo(secure, "still there?") == f"{blue}: still there?"
        # opened after: the other environment
        fresh = await connect(True)
        assert await echo(fresh, "and now?") == f"{green}: and now?"
        for ws in (plain, secure, fresh):
            await ws.close()

"""HTTPS through the router: certificates that belong to domains, checked by real TLS clients
(curl, openssl s_client) against a real HAProxy on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError
from sqlalchemy import select

from services.access import Request
from services.context import Services, open_services
from services.errors import BadRequest, Forbidden
from services.settings import Settings
from services.traffic.certificates import (
    add_certificate,
    covers,
    get_certificate,
    list_certificates,
    remove_certificate,
)
from services.traffic.haproxy import EmbeddedHAProxy, RouterFiles
from services.traffic.router import apply_routes, router_config, router_state
from services.traffic.routing import add_domain, remove_domain, swap_domains
from storage.models import AuditEntry, Certificate
from tests.conftest import ADMIN, BASE_DOMAIN, OWNER, MakeSource
from tests.tls import NOW, PEM, LocalCA, run_tool, served_serial


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TLSRouter:
    svc: Services
    files: RouterFiles
    bind: str
    tls_port: int
    ca_file: Path

    async def apply(self, *, own: bool = True) -> None:
        """As ``serve`` does (``own``), or as a front door beside it does (keeping how the
        router listens as its configuration says)."""
        bind = self.bind if own else None
        assert await apply_routes(self.svc, files=self.files, bind=bind)
        await asyncio.sleep(0.3)  # a certificate's change is a reload: let the worker settle

    async def curl(self, host: str, *extra: str) -> str:
        """The page at https://HOST:PORT/, HOST resolved to 127.0.0.1, checked against the CA."""
        out = await run_tool(
            "curl", "-sS", "--noproxy", "*", "--max-time", "5", "--cacert", str(self.ca_file),
            "--resolve", f"{host}:{self.tls_port}:127.0.0.1", *extra,
            f"https://{host}:{self.tls_port}/",
        )  # fmt: skip
        return out.strip()

    async def serial(self, servername: str) -> int:
        """The serial of the leaf certificate HAProxy serves for this SNI name."""
        return await served_serial(self.tls_port, servername)


def _tls_settings(
    routed: Settings, tmp_path: Path, wildcard: Path | None, **more: object
) -> Settings:
    update = {"router_tls_bind": f"127.0.0.1:{_free_port()}", "tls_wildcard_cert": wildcard}
    return routed.model_copy(update={**update, **more})


@pytest.fixture
async def tls_router(
    routed: Settings, tmp_path: Path, ca: LocalCA, request: pytest.FixtureRequest
) -> AsyncIterator[TLSRouter]:
    """clonebot's services (SQLite) with an HAProxy listening for HTTP and HTTPS, the
    internal domains served with a wildcard certificate of the test CA."""
    wildcard = ca.issue(f"*.{BASE_DOMAIN}")
    wildcard_file = tmp_path / "wildcard.pem"
    wildcard_file.write_bytes(wildcard.cert_pem + wildcard.key_pem)
    strict = getattr(request, "param", False)
    settings = _tls_settings(routed, tmp_path, wildcard_file, tls_strict_sni=strict)
    assert settings.router_dir is not None and settings.router_tls_bind is not None
    files = RouterFiles(settings.router_dir)
    async with open_services(settings) as svc:
        haproxy = EmbeddedHAProxy(files=files)
        state = await router_state(svc)
        config, tls = await router_config(svc, files=files, state=state, bind=settings.router_bind)
        assert tls is not None
        await haproxy.start(config=config, hosts=state.hosts, crt_list=tls.crt_list)
        try:
            port = int(settings.router_tls_bind.rpartition(":")[2])
            yield TLSRouter(svc, files, settings.router_bind, port, ca.write(tmp_path / "ca.pem"))
        finally:
            await haproxy.stop()


def _key_lines(pem: str) -> list[str]:
    """The base64 lines of the private key in ``pem``: found in no log, no audit entry."""
    block = pem[pem.index("PRIVATE KEY-----") :].splitlines()[1:-1]
    assert block
    return block


async def test_a_certificate_follows_its_domain_through_a_swap(
    tls_router: TLSRouter, make_source: MakeSource, ca: LocalCA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    router, me = tls_router, Request(OWNER)
    blue, green = [(await make_source(web_nodes=1, db_nodes=0)).name for _ in range(2)]
    await add_domain(router.svc, me, env=blue, domain="shop.test")
    leaf = ca.issue("shop.test", "www.shop.test")
    record = await add_certificate(
        router.svc, me, domain="shop.test", cert_pem=leaf.cert_pem, key_pem=leaf.key_pem
    )
    assert int(record.serial, 16) == leaf.cert.serial_number
    await router.apply()

    assert await router.curl("shop.test") == f"{blue} web 1"
    assert await router.serial("shop.test") == leaf.cert.serial_number
    # HTTP/2 is offered (ALPN) and reaches the environment too
    version = await router.curl("shop.test", "--http2", "-o", "/dev/null", "-w", "%{http_version}")
    assert version == "2"

    await swap_domains(router.svc, me, first=blue, second=green)
    await router.apply(own=False)  # as a front door beside `serve` applies it
    assert await router.curl("shop.test") == f"{green} web 1"
    assert await router.serial("shop.test") == leaf.cert.serial_number, "the same certificate"

    # an internal domain is served with the wildcard certificate
    wildcard = x509.load_pem_x509_certificate(router.files.wildcard_cert.read_bytes())
    assert await router.curl(f"{blue}.{BASE_DOMAIN}") == f"{blue} web 1"
    assert await router.serial(f"{blue}.{BASE_DOMAIN}") == wildcard.serial_number

    # the key: a file of mode 600 in a folder of mode 700, and nowhere else
    key_file = router.files.cert_of("shop.test")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(router.files.certs.stat().st_mode) == 0o700
    stored = key_file.read_text()
    assert leaf.cert_pem.decode() in stored
    async with router.svc.sessions() as session:
        audit = (await session.scalars(select(AuditEntry))).all()
    assert [a.detail["serial"] for a in audit if a.action == "cert add"] == [record.serial]
    elsewhere = [
        repr([(a.detail, a.reason) for a in audit]),
        caplog.text,
        router.files.log.read_text(errors="replace"),
        router.files.config.read_text(),
    ]
    for line in _key_lines(stored) + _key_lines(leaf.key_pem.decode()):
        assert not any(line in text for text in elsewhere)


async def test_a_removed_certificate_is_no_longer_served(
    tls_router: TLSRouter, make_source: MakeSource, ca: LocalCA
) -> None:
    router, me = tls_router, Request(OWNER)
    env = (await make_source(web_nodes=1, db_nodes=0)).name
    await add_domain(router.svc, me, env=env, domain="gone.test")
    leaf = ca.issue("gone.test")
    await add_certificate(
        router.svc, me, domain="gone.test", cert_pem=leaf.cert_pem, key_pem=leaf.key_pem
    )
    await router.apply(own=False)
    assert await router.serial("gone.test") == leaf.cert.serial_number
    with pytest.raises(Forbidden):
        await remove_certificate(router.svc, Request("USOMEONE1"), domain="gone.test")
    await remove_certificate(router.svc, me, domain="gone.test")
    await router.apply()
    assert not router.files.cert_of("gone.test").exists()
    assert await router.serial("gone.test") != leaf.cert.serial_number  # the default one
    assert list(await list_certificates(router.svc)) == []


@pytest.mark.parametrize("tls_router", [True], indirect=True)
async def test_strict_sni_refuses_a_name_without_certificate(tls_router: TLSRouter) -> None:
    out = await run_tool(
        "openssl", "s_client", "-servername", "nothing.test",
        "-connect", f"127.0.0.1:{tls_router.tls_port}", check=False,
    )  # fmt: skip
    assert "BEGIN CERTIFICATE" not in out
    assert " strict-sni" in tls_router.files.config.read_text()
    assert await tls_router.serial(f"x.{BASE_DOMAIN}") > 0  # the wildcard still is


def _bad(ca: LocalCA, case: str) -> tuple[bytes, bytes, str]:
    good, other = ca.issue("shop.test"), ca.issue("shop.test")
    if case == "wrong key":
        return good.cert_pem, other.key_pem, "the key does not match the certificate"
    if case == "wrong domain":
        wrong = ca.issue("other.test", "*.shop.test")
        names = "it names other.test, \\*.shop.test"
        return wrong.cert_pem, wrong.key_pem, f"not for shop.test: {names}"
    if case == "expired":
        old = ca.issue("shop.test", start=NOW - timedelta(days=20), days=10)
        return old.cert_pem, old.key_pem, "the certificate expired on"
    if case == "not yet valid":
        new = ca.issue("shop.test", start=NOW + timedelta(days=2))
        return new.cert_pem, new.key_pem, "not valid before"
    if case == "not PEM":
        return b"hello", good.key_pem, "the certificate is not PEM"
    encrypted = good.key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    return good.cert_pem, encrypted, "the key has a passphrase"


BAD = ["wrong key", "wrong domain", "expired", "not yet valid", "not PEM", "passphrase"]


async def test_bad_certificates_are_refused_and_nothing_is_written(
    routed: Settings, tmp_path: Path, make_source: MakeSource, ca: LocalCA
) -> None:
    settings = _tls_settings(routed, tmp_path, None)
    assert settings.router_dir is not None
    files = RouterFiles(settings.router_dir)
    me = Request(OWNER)
    async with open_services(settings) as svc:
        env = (await make_source(web_nodes=1, db_nodes=0)).name
        await add_domain(svc, me, env=env, domain="shop.test")
        for case in BAD:
            cert_pem, key_pem, message = _bad(ca, case)
            with pytest.raises(BadRequest, match=message):
                await add_certificate(
                    svc, me, domain="shop.test", cert_pem=cert_pem, key_pem=key_pem
                )
        good = ca.issue("shop.test", f"{env}.{BASE_DOMAIN}", "free.test")
        pem = {"cert_pem": good.cert_pem, "key_pem": good.key_pem}
        with pytest.raises(BadRequest, match="is an internal domain"):
            await add_certificate(svc, me, domain=f"{env}.{BASE_DOMAIN}", **pem)
        with pytest.raises(BadRequest, match="bound to no environment: bind it first"):
            await add_certificate(svc, me, domain="free.test", **pem)
        with pytest.raises(Forbidden):
            await add_certificate(svc, Request("USOMEONE1"), domain="shop.test", **pem)
        async with svc.sessions() as session:
            assert (await session.scalars(select(Certificate))).all() == []
            actions = (await session.scalars(select(AuditEntry.action))).all()
        assert "cert add" not in actions
        assert not files.certs.exists() or list(files.certs.iterdir()) == []

        # the good one, seen by whoever may view the environment, never its key
        await add_certificate(svc, me, domain="Shop.Test", **pem)
        seen = await get_certificate(svc, Request(ADMIN), domain="shop.test")
        assert (int(seen.serial, 16), seen.added_by) == (good.cert.serial_number, OWNER)
        with pytest.raises(Forbidden):
            await get_certificate(svc, Request("USOMEONE1"), domain="shop.test")

        # unbound, the certificate stays with the name: an admin's alone
        await remove_domain(svc, me, env=env, domain="shop.test")
        with pytest.raises(Forbidden, match="bound to no environment: only an admin"):
            await remove_certificate(svc, me, domain="shop.test")
        await remove_certificate(svc, Request(ADMIN), domain="shop.test")
        assert not files.cert_of("shop.test").exists()


@pytest.mark.parametrize(
    ("pattern", "domain", "valid"),
    [
        ("shop.test", "shop.test", True),
        ("*.shop.test", "www.shop.test", True),
        ("*.shop.test", "shop.test", False),
        ("*.shop.test", "a.b.shop.test", False),
        ("w*.shop.test", "www.shop.test", False),
        ("*.*.test", "a.b.test", False),
    ],
)
def test_wildcards_cover_exactly_one_label(pattern: str, domain: str, valid: bool) -> None:
    assert covers(pattern, domain) is valid


def test_tls_settings_are_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: LocalCA
) -> None:
    monkeypatch.setenv("CLONEBOT_BASE_DOMAIN", BASE_DOMAIN)
    monkeypatch.setenv("CLONEBOT_ROUTER_BIND", "127.0.0.1:8080")
    assert Settings().router_tls_bind is None, "off by default"
    monkeypatch.setenv("CLONEBOT_TLS_STRICT_SNI", "true")
    with pytest.raises(ValidationError, match="CLONEBOT_TLS_STRICT_SNI is for HTTPS"):
        Settings()
    monkeypatch.setenv("CLONEBOT_ROUTER_TLS_BIND", "8443")
    with pytest.raises(ValidationError, match="CLONEBOT_ROUTER_TLS_BIND"):
        Settings()
    monkeypatch.setenv("CLONEBOT_ROUTER_TLS_BIND", "127.0.0.1:8443")
    other = ca.issue("*.example.com")
    wildcard = tmp_path / "wildcard.pem"
    wildcard.write_bytes(other.cert_pem + other.key_pem)
    monkeypatch.setenv("CLONEBOT_TLS_WILDCARD_CERT", str(wildcard))
    with pytest.raises(
        ValidationError, match=f"CLONEBOT_TLS_WILDCARD_CERT: .* for \\*.{BASE_DOMAIN}"
    ):
        Settings()
    right = ca.issue(f"*.{BASE_DOMAIN}")
    wildcard.write_bytes(right.cert_pem + right.key_pem)
    assert Settings().tls_wildcard_cert == wildcard

"""Certificates from a real ACME server (Debian's pebble), validated through the router's own
HTTP-01 answers, served by a real HAProxy, renewed without a reload; checked by real TLS
clients (curl, openssl s_client, Python's ssl) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from pydantic import ValidationError
from sqlalchemy import select

from services.access import Request
from services.acme import RouterChallenges, account_key, check_token
from services.certificates import Source, add_certificate
from services.context import Services, open_services
from services.errors import AcmeFailed, BadRequest, Forbidden
from services.haproxy import EmbeddedHAProxy, RouterFiles, structure_of, worker_pid
from services.renewals import (
    RENEW_BEFORE,
    obtain_certificate,
    renew_certificates,
    renews_at,
)
from services.router import RouterState, apply_routes, router_config, router_state
from services.routing import add_domain, remove_domain
from services.settings import Settings
from storage.models import AuditEntry, Certificate
from tests.conftest import BASE_DOMAIN, OWNER, MakeSource, _free_port
from tests.pebble import Pebble, run_pebble
from tests.tls import LocalCA


@dataclass
class Router:
    """clonebot's services with an HAProxy of the test's own, listening for HTTP and HTTPS."""

    svc: Services
    settings: Settings
    files: RouterFiles
    haproxy: EmbeddedHAProxy
    tls_port: int

    async def start(self) -> None:
        state = await router_state(self.svc)
        bind = self.settings.router_bind
        config, tls = await router_config(self.svc, files=self.files, state=state, bind=bind)
        assert tls is not None
        await self.haproxy.start(config=config, hosts=state.hosts, crt_list=tls.crt_list)

    async def apply(self) -> None:
        assert await apply_routes(self.svc, files=self.files, bind=self.settings.router_bind)

    async def config(self, state: RouterState) -> str:
        """The configuration an apply would bring HAProxy to, for ``state``: another
        structure is a reload (``haproxy.apply_to_running``)."""
        bind = self.settings.router_bind
        config, _ = await router_config(self.svc, files=self.files, state=state, bind=bind)
        return structure_of(config)

    async def worker(self) -> str:
        pid = await worker_pid(self.haproxy.api)
        assert pid is not None
        return pid

    async def curl(self, host: str, ca: Path) -> str:
        """The page at https://HOST:PORT/, HOST resolved to 127.0.0.1, checked against ``ca``."""
        return await _run(
            "curl", "-sS", "--fail", "--noproxy", "*", "--max-time", "5", "--cacert", str(ca),
            "--resolve", f"{host}:{self.tls_port}:127.0.0.1", f"https://{host}:{self.tls_port}/",
        )  # fmt: skip

    async def serial(self, servername: str, ca: Path) -> int:
        """The serial of the leaf HAProxy serves for this SNI name, its chain verified."""
        out = await _run(
            "openssl", "s_client", "-servername", servername, "-verify_return_error",
            "-CAfile", str(ca), "-connect", f"127.0.0.1:{self.tls_port}",
        )  # fmt: skip
        assert "Verify return code: 0 (ok)" in out, out[-800:]
        found = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
        assert found, out[-500:]
        return x509.load_pem_x509_certificate(found.group(0).encode()).serial_number


async def _run(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(10):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    text = out.decode(errors="replace")
    assert process.returncode == 0, (argv[:2], text[-800:])
    return text


@contextlib.asynccontextmanager
async def _router(settings: Settings) -> AsyncIterator[Router]:
    assert settings.router_dir is not None and settings.router_tls_bind is not None
    files = RouterFiles(settings.router_dir)
    async with open_services(settings) as svc:
        haproxy = EmbeddedHAProxy(files=files)
        port = int(settings.router_tls_bind.rpartition(":")[2])
        router = Router(svc, settings, files, haproxy, port)
        await router.start()
        try:
            yield router
        finally:
            await router.haproxy.stop()


def _tls(routed: Settings, **more: object) -> Settings:
    return routed.model_copy(update={"router_tls_bind": f"127.0.0.1:{_free_port()}", **more})


@dataclass
class Acme:
    router: Router
    pebble: Pebble
    root: Path  # what pebble issues under: what a client trusts


@pytest.fixture
async def acme(routed: Settings, tmp_path: Path) -> AsyncIterator[Acme]:
    """pebble validating on the router's HTTP port, and the router serving HTTPS."""
    http_port = int(routed.router_bind.rpartition(":")[2])
    async with run_pebble(tmp_path / "pebble", http_port=http_port) as pebble:
        settings = _tls(
            routed, acme_directory=pebble.directory, acme_ca_bundle=pebble.ca_bundle,
            acme_email="ops@example.com",
        )  # fmt: skip
        async with _router(settings) as router:
            yield Acme(router, pebble, await pebble.issuing_root(tmp_path / "root.pem"))


class KeepAlive:
    """One HTTPS connection kept open between requests, as a browser keeps it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, host: str, ca: Path) -> KeepAlive:
        context = ssl.create_default_context(cafile=str(ca))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=host
        )
        return cls(reader, writer)

    def serial(self) -> int:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number

    async def get(self, host: str) -> tuple[str, str]:
        """The head and body of ``GET /`` on this connection."""
        self.writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await self.writer.drain()
        async with asyncio.timeout(5):
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode()
            length = re.search(r"(?im)^content-length: *(\d+)", head)
            assert length, head
            body = await self.reader.readexactly(int(length.group(1)))
        return head, body.decode()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


def _key_lines(pem: str) -> list[str]:
    """The base64 lines of the private key in ``pem``."""
    block = pem[pem.index("PRIVATE KEY-----") :].splitlines()[1:-1]
    assert block
    return block


@pytest.mark.docker
async def test_acme_issues_a_certificate_renewed_without_a_reload_and_kept_by_a_restart(
    acme: Acme, make_source: MakeSource, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the acme library's own debug lines too
    router, root, me = acme.router, acme.root, Request(OWNER)
    env = (await make_source(web_nodes=1, db_nodes=0)).name
    await add_domain(router.svc, me, env=env, domain="shop.test")

    issued = await obtain_certificate(router.svc, me, domain="shop.test")
    assert issued.source == Source.ACME and "Pebble Intermediate" in issued.issuer
    assert renews_at(issued) == issued.not_after - RENEW_BEFORE
    await router.apply()  # a new domain: a new crt-list entry, a reload
    assert await router.curl("shop.test", root) == f"{env} web 1\n"
    first = await router.serial("shop.test", root)
    assert first == int(issued.serial, 16)
    # the challenge answered is taken away again: from HAProxy and from its file
    assert await router.haproxy.api.show_map(router.files.acme_map) == {}
    assert router.files.acme_map.read_text() == ""

    before = await KeepAlive.open(router.tls_port, "shop.test", root)
    try:
        head, body = await before.get("shop.test")
        assert head.startswith("HTTP/1.1 200") and body == f"{env} web 1\n"
        worker = await router.worker()
        # the same environments before and after: other tests' come and go on the engine
        state = await router_state(router.svc)
        config = await router.config(state)

        # not due yet: nothing is renewed; due (29 days before it expires): renewed
        assert await renew_certificates(router.svc, now=issued.not_after - timedelta(days=31)) == []
        done = await renew_certificates(router.svc, now=issued.not_after - timedelta(days=29))
        assert [(r.domain, r.error) for r in done] == [("shop.test", None)]
        renewed = int(done[0].serial or "0", 16)
        assert renewed != first

        assert await router.serial("shop.test", root) == renewed, "served at once"
        assert await router.worker() == worker, "no reload"
        # the connection opened before still answers, on the certificate it began with
        head, body = await before.get("shop.test")
        assert head.startswith("HTTP/1.1 200") and body == f"{env} web 1\n"
        assert "connection: close" not in head.lower()
        assert before.serial() == first
    finally:
        await before.close()

    assert await router.config(state) == config, "a replaced certificate is no new structure"

    # HAProxy restarted: the file has the renewed certificate
    await router.haproxy.stop()
    router.haproxy = EmbeddedHAProxy(files=router.files)
    await router.start()
    assert await router.serial("shop.test", root) == renewed
    assert await router.curl("shop.test", root) == f"{env} web 1\n"

    # the keys: files of mode 600, in no log, audit entry or configuration
    account = router.files.certs / "acme-account.key"
    for key_file in (account, router.files.cert_of("shop.test")):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    async with router.svc.sessions() as session:
        audit = (await session.scalars(select(AuditEntry))).all()
        record = await session.get(Certificate, "shop.test")
    assert [a.action for a in audit if a.action.startswith("cert")] == ["cert add", "cert renew"]
    assert record is not None and record.source == Source.ACME and record.added_by == OWNER
    elsewhere = [
        repr([(a.detail, a.reason) for a in audit]),
        caplog.text,
        router.files.log.read_text(errors="replace"),
        router.files.config.read_text(),
        acme.pebble.log.read_text(errors="replace"),
    ]
    keys = _key_lines(account.read_text()) + _key_lines(
        router.files.cert_of("shop.test").read_text()
    )
    for line in keys:
        assert not any(line in text for text in elsewhere)


@pytest.mark.docker
async def test_the_router_answers_the_challenge_of_a_domain_no_environment_holds(
    acme: Acme, make_source: MakeSource
) -> None:
    router, me = acme.router, Request(OWNER)
    env = (await make_source(web_nodes=1, db_nodes=0)).name
    await add_domain(router.svc, me, env=env, domain="gone.test")
    issued = await obtain_certificate(router.svc, me, domain="gone.test")
    await remove_domain(router.svc, me, env=env, domain="gone.test")
    await router.apply()

    # unbound, its requests meet no environment; its renewal is answered all the same
    done = await renew_certificates(router.svc, now=issued.not_after)
    assert [(r.domain, r.error) for r in done] == [("gone.test", None)]
    assert await router.serial("gone.test", acme.root) == int(done[0].serial or "0", 16)


@pytest.mark.docker
async def test_asking_acme_needs_the_right_to_move_the_domains_traffic(
    acme: Acme, make_source: MakeSource
) -> None:
    router = acme.router
    env = (await make_source(web_nodes=1, db_nodes=0)).name
    await add_domain(router.svc, Request(OWNER), env=env, domain="shop.test")
    with pytest.raises(Forbidden):
        await obtain_certificate(router.svc, Request("USOMEONE1"), domain="shop.test")
    with pytest.raises(BadRequest, match="bound to no environment"):
        await obtain_certificate(router.svc, Request(OWNER), domain="free.test")
    with pytest.raises(BadRequest, match="internal domain"):
        await obtain_certificate(router.svc, Request(OWNER), domain=f"{env}.{BASE_DOMAIN}")
    async with router.svc.sessions() as session:
        assert (await session.scalars(select(Certificate))).all() == []
    assert not (router.files.certs / "acme-account.key").exists(), "pebble was never asked"


@pytest.mark.docker
async def test_a_person_replacing_a_certificate_is_served_at_once_without_a_reload(
    routed: Settings, make_source: MakeSource
) -> None:
    ca = LocalCA()
    me = Request(OWNER)
    async with _router(_tls(routed)) as router:
        ca_file = ca.write(router.files.directory / "ca.pem")
        env = (await make_source(web_nodes=1, db_nodes=0)).name
        await add_domain(router.svc, me, env=env, domain="shop.test")
        old, new = ca.issue("shop.test"), ca.issue("shop.test")
        pem = {"cert_pem": old.cert_pem, "key_pem": old.key_pem}
        await add_certificate(router.svc, me, domain="shop.test", **pem)
        await router.apply()
        assert await router.serial("shop.test", ca_file) == old.cert.serial_number
        worker = await router.worker()
        state = await router_state(router.svc)  # other tests' environments come and go
        config = await router.config(state)

        pem = {"cert_pem": new.cert_pem, "key_pem": new.key_pem}
        await add_certificate(router.svc, me, domain="shop.test", **pem)
        assert await router.serial("shop.test", ca_file) == new.cert.serial_number
        assert await router.worker() == worker, "no reload"
        assert await router.config(state) == config, "nor at the next apply"
        assert await router.curl("shop.test", ca_file) == f"{env} web 1\n"


HOSTILE_TOKENS = [
    "",
    "short",
    "a" * 129,
    "abcdefghijklmnopqrstuvw xyz",
    "abcdefghijklmnopqrstuvwxyz; del map /etc/x k",
    "abcdefghijklmnopqrstuvwxyz\nshow info",
    "../../../../etc/passwd/abcdefghijklmnop",
    "abcdefghijklmnopqrstuvwxyz=",
    "abcdefghijklmnopqrstuvwxyz%20",
]


@pytest.mark.parametrize("token", HOSTILE_TOKENS)
def test_a_token_that_is_not_base64url_is_refused(token: str) -> None:
    with pytest.raises(AcmeFailed, match="not base64url"):
        check_token(token)


async def test_a_hostile_token_never_reaches_the_router(tmp_path: Path) -> None:
    files = RouterFiles(tmp_path / "router")
    challenges = RouterChallenges(files)
    good = "A" * 43
    for token in HOSTILE_TOKENS:
        with pytest.raises(AcmeFailed, match="not base64url"):
            await challenges.publish(token=token, key_authorization=f"{good}.{good}")
        with pytest.raises(AcmeFailed, match="not base64url"):
            await challenges.withdraw(token=token)
    with pytest.raises(AcmeFailed, match="key authorization"):
        await challenges.publish(token=good, key_authorization=f"{good}.x y")
    assert not files.directory.exists(), "nothing was written, no socket was opened"


def test_the_account_key_is_made_once_mode_600_and_a_broken_one_is_not_quoted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "certs" / "acme-account.key"
    made = account_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert account_key(path).private_numbers() == made.private_numbers(), "the same account"
    path.write_text(
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGJ1dCBicm9rZW4=\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(AcmeFailed, match="not an unencrypted ECDSA key") as refused:
        account_key(path)
    assert "c2VjcmV0" not in refused.value.message


@pytest.mark.parametrize(
    "domain", ["shop.test; del map x", "shop.test\nshow info", "*.shop.test", "a b.test", "x"]
)
async def test_a_hostile_domain_is_refused_before_any_acme_server_is_asked(
    settings: Settings, domain: str
) -> None:
    acme = settings.model_copy(update={"acme_directory": "https://127.0.0.1:9/dir"})
    async with open_services(acme) as svc:
        with pytest.raises(BadRequest, match="not a valid domain name"):
            await obtain_certificate(svc, Request(OWNER), domain=domain)


async def test_acme_is_off_by_default(settings: Settings) -> None:
    assert settings.acme_directory is None
    async with open_services(settings) as svc:
        with pytest.raises(BadRequest, match="CLONEBOT_ACME_DIRECTORY"):
            await obtain_certificate(svc, Request(OWNER), domain="shop.test")


def test_acme_settings_are_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLONEBOT_ACME_EMAIL", "ops@example.com")
    with pytest.raises(ValidationError, match="CLONEBOT_ACME_EMAIL is for ACME"):
        Settings()
    monkeypatch.setenv("CLONEBOT_ACME_DIRECTORY", "http://acme.example/dir")
    with pytest.raises(ValidationError, match="https:// URL"):
        Settings()
    monkeypatch.setenv("CLONEBOT_ACME_DIRECTORY", "https://acme.example/dir")
    monkeypatch.setenv("CLONEBOT_ACME_EMAIL", "not an address")
    with pytest.raises(ValidationError, match="not an email address"):
        Settings()
    monkeypatch.setenv("CLONEBOT_ACME_EMAIL", "ops@example.com")
    monkeypatch.setenv("CLONEBOT_ACME_CA_BUNDLE", str(tmp_path / "none.pem"))
    with pytest.raises(ValidationError, match=r"CLONEBOT_ACME_CA_BUNDLE: .* is not a file"):
        Settings()
    monkeypatch.setenv("CLONEBOT_ACME_CA_BUNDLE", "")
    assert Settings().acme_directory == "https://acme.example/dir"

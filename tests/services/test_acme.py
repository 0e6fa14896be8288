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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from pydantic import ValidationError
from sqlalchemy import select, update

from services.access import Request
from services.context import Services, open_services
from services.errors import AcmeFailed, BadRequest, Forbidden
from services.settings import Settings
from services.supervisor import Tellers, serve
from services.traffic.acme import RouterChallenges, account_key, check_token
from services.traffic.certificates import Source, add_certificate, push_certificates
from services.traffic.haproxy import (
    EmbeddedHAProxy,
    RouterFiles,
    RuntimeAPI,
    structure_of,
    worker_pid,
)
from services.traffic.renewals import (
    MOST_BEFORE,
    ORDER_FAILED,
    RenewalNotice,
    next_renewal,
    obtain_certificate,
    renew_certificates,
    renewal_state,
    renewal_window,
)
from services.traffic.router import RouterState, apply_routes, router_config, router_state
from services.traffic.routing import add_domain, remove_domain
from storage.models import AuditEntry, Certificate, EnvironmentRecord, utcnow
from tests.conftest import ADMIN, BASE_DOMAIN, OWNER, MakeSource, _free_port
from tests.pebble import Pebble, run_pebble
from tests.tls import LocalCA, run_tool, served_serial


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
        return await run_tool(
            "curl", "-sS", "--fail", "--noproxy", "*", "--max-time", "5", "--cacert", str(ca),
            "--resolve", f"{host}:{self.tls_port}:127.0.0.1", f"https://{host}:{self.tls_port}/",
        )  # fmt: skip

    async def serial(self, servername: str, ca: Path) -> int:
        """The serial of the leaf HAProxy serves for this SNI name, its chain verified."""
        return await served_serial(self.tls_port, servername, ca=ca)


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


@contextlib.asynccontextmanager
async def _acme(
    routed: Settings, tmp_path: Path, *, validity_s: int | None, **more: object
) -> AsyncIterator[Acme]:
    http_port = int(routed.router_bind.rpartition(":")[2])
    async with run_pebble(
        tmp_path / "pebble", http_port=http_port, validity_s=validity_s
    ) as pebble:
        settings = _tls(
            routed, acme_directory=pebble.directory, acme_ca_bundle=pebble.ca_bundle,
            acme_email="ops@example.com", **more,
        )  # fmt: skip
        async with _router(settings) as router:
            yield Acme(router, pebble, await pebble.issuing_root(tmp_path / "root.pem"))


@pytest.fixture
async def acme(routed: Settings, tmp_path: Path) -> AsyncIterator[Acme]:
    """pebble validating on the router's HTTP port, and the router serving HTTPS."""
    async with _acme(routed, tmp_path, validity_s=None) as acme:
        yield acme


@pytest.fixture
async def daily_acme(routed: Settings, tmp_path: Path) -> AsyncIterator[Acme]:
    """The same, pebble issuing certificates that last 24 hours."""
    async with _acme(routed, tmp_path, validity_s=86400) as acme:
        yield acme


@contextlib.asynccontextmanager
async def _unreachable(acme: Acme) -> AsyncIterator[Services]:
    """clonebot's services with an ACME server that does not answer, on the same database."""
    dead = acme.router.settings.model_copy(
        update={"acme_directory": f"https://127.0.0.1:{_free_port()}/dir"}
    )
    async with open_services(dead) as svc:
        yield svc


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


def _orders(pebble: Pebble) -> int:
    """How many orders the ACME server was sent (its log names each new-order request)."""
    return pebble.log.read_text(errors="replace").count("POST /order-plz")


def _key_lines(pem: str) -> list[str]:
    """The base64 lines of the private key in ``pem`` that carry its secret: an ECDSA P-256
    key in PKCS#8 ends with its public key, whose last line the certificate (logged by the acme
    library at debug) may carry too, at the same offset now and then."""
    block = pem[pem.index("PRIVATE KEY-----") :].splitlines()[1:-1]
    assert len(block) == 3, "a P-256 key: 138 bytes, the public key in bytes 73 on"
    return block[:2]


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
    # pebble's certificates last five years: renewed 30 days before they expire
    assert issued.renew_at == issued.not_after - MOST_BEFORE
    state = renewal_state(issued, router.settings)
    assert state is not None and state.next_at == issued.renew_at and state.not_renewed is None
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
        found = [i for i, text in enumerate(elsewhere) if line in text]
        assert not found, (len(line), found)


@pytest.mark.docker
async def test_a_certificate_whose_domain_is_unbound_or_expired_is_told_once_not_ordered(
    acme: Acme, make_source: MakeSource
) -> None:
    router, me = acme.router, Request(OWNER)
    env = (await make_source(web_nodes=1, db_nodes=0)).name
    await add_domain(router.svc, me, env=env, domain="gone.test")
    gone = await obtain_certificate(router.svc, me, domain="gone.test")
    await remove_domain(router.svc, me, env=env, domain="gone.test")
    orders = _orders(acme.pebble)
    assert orders >= 1

    # due, but unbound (its requests meet no environment): told, never ordered
    assert gone.renew_at is not None
    done = done_before = await renew_certificates(router.svc, now=gone.renew_at)
    assert [(r.domain, r.error, r.retry_at) for r in done] == [
        ("gone.test", "gone.test is bound to no environment any more", None)
    ]
    assert _orders(acme.pebble) == orders, "the ACME server was not asked"

    # due, but expired (serve was down for long): the same
    await add_domain(router.svc, me, env=env, domain="old.test")
    issued = await obtain_certificate(router.svc, me, domain="old.test")
    orders = _orders(acme.pebble)
    done = await renew_certificates(router.svc, now=issued.not_after)
    assert [(r.domain, r.error, r.retry_at) for r in done] == [
        ("old.test", f"it expired on {issued.not_after:%Y-%m-%d %H:%M} UTC", None)
    ]
    # told once: the next checks, however late, leave them be
    assert await renew_certificates(router.svc, now=issued.not_after + timedelta(days=9)) == []
    assert _orders(acme.pebble) == orders, "the ACME server was not asked"
    async with router.svc.sessions() as session:
        record = await session.get(Certificate, "gone.test")
    assert record is not None and record.renew_at is None
    state = renewal_state(record, router.settings)
    assert state is not None and state.not_renewed == done_before[0].error


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
    with pytest.raises(Forbidden):
        await obtain_certificate(router.svc, Request("USOMEONE1"), domain=f"{env}.{BASE_DOMAIN}")
    with pytest.raises(BadRequest, match="no environment's internal domain: none is named nosuch"):
        await obtain_certificate(router.svc, Request(OWNER), domain=f"nosuch.{BASE_DOMAIN}")
    with pytest.raises(BadRequest, match="no environment's internal domain"):
        await obtain_certificate(router.svc, Request(OWNER), domain=f"a.{env}.{BASE_DOMAIN}")
    async with router.svc.sessions() as session:
        assert (await session.scalars(select(Certificate))).all() == []
    assert not (router.files.certs / "acme-account.key").exists(), "pebble was never asked"


@pytest.mark.docker
async def test_an_internal_domain_gets_its_own_certificate_over_the_wildcard_until_renamed(
    routed: Settings, tmp_path: Path, make_source: MakeSource
) -> None:
    ca = LocalCA()
    wildcard = ca.issue(f"*.{BASE_DOMAIN}")
    (tmp_path / "wildcard.pem").write_bytes(wildcard.cert_pem + wildcard.key_pem)
    ca_file = ca.write(tmp_path / "ca.pem")
    more = {"tls_wildcard_cert": tmp_path / "wildcard.pem"}
    async with _acme(routed, tmp_path, validity_s=None, **more) as acme:
        router, root, me = acme.router, acme.root, Request(OWNER)
        env = (await make_source(web_nodes=1, db_nodes=0)).name
        host, other = f"{env}.{BASE_DOMAIN}", f"other.{BASE_DOMAIN}"
        await router.apply()
        wildcard_serial = x509.load_pem_x509_certificate(wildcard.cert_pem).serial_number
        assert await router.serial(host, ca_file) == wildcard_serial

        # a stranger is refused before the CA is asked; a person's own files stay refused
        with pytest.raises(Forbidden):
            await obtain_certificate(router.svc, Request("USOMEONE1"), domain=host)
        assert _orders(acme.pebble) == 0
        with pytest.raises(BadRequest, match="is an internal domain"):
            await add_certificate(
                router.svc, me, domain=host, cert_pem=wildcard.cert_pem, key_pem=wildcard.key_pem
            )

        issued = await obtain_certificate(router.svc, me, domain=host)
        assert issued.source == Source.ACME and issued.renew_at is not None
        await router.apply()  # a new crt-list entry, listed after the wildcard
        listed = router.files.crt_list.read_text().splitlines()
        assert listed[0].endswith(f" *.{BASE_DOMAIN}") and listed[1].endswith(f" {host}")
        # HAProxy picks the exact name over the wildcard, whatever the order of the list
        assert await router.serial(host, root) == int(issued.serial, 16)
        assert await router.curl(host, root) == f"{env} web 1\n"
        assert await router.serial(other, ca_file) == wildcard_serial, "the others keep it"

        # bound while its environment exists: renewed
        done = await renew_certificates(router.svc, now=issued.renew_at)
        assert [(r.domain, r.error) for r in done] == [(host, None)]
        renewed = done[0].serial
        assert renewed is not None and await router.serial(host, root) == int(renewed, 16)

        # renamed (the record takes the new name): told once, never ordered again
        async with router.svc.sessions() as session, session.begin():
            query = update(EnvironmentRecord).where(EnvironmentRecord.name == env)
            await session.execute(query.values(name=f"{env}x"))
            current = await session.get(Certificate, host)
        assert current is not None and current.renew_at is not None
        orders = _orders(acme.pebble)
        done = await renew_certificates(router.svc, now=current.renew_at)
        gone = f"{host}'s environment {env} is gone (deleted or renamed)"
        assert [(r.domain, r.error, r.retry_at) for r in done] == [(host, gone, None)]
        assert await renew_certificates(router.svc, now=current.not_after) == []
        assert _orders(acme.pebble) == orders, "the ACME server was not asked"


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


@pytest.mark.parametrize(
    ("life", "before"),
    [
        (timedelta(days=90), timedelta(days=30)),
        (timedelta(days=397), timedelta(days=30)),
        (timedelta(days=6), timedelta(days=2)),
        (timedelta(hours=24), timedelta(hours=8)),
    ],
)
def test_a_certificate_is_renewed_when_a_third_of_its_life_is_left_at_most_30_days(
    life: timedelta, before: timedelta
) -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    assert renewal_window(not_before=start, not_after=start + life) == before


@pytest.mark.docker
async def test_a_24_hour_certificate_is_renewed_8_hours_before_it_expires_not_at_every_check(
    daily_acme: Acme, make_source: MakeSource
) -> None:
    router, me = daily_acme.router, Request(OWNER)
    env = (await make_source(web_nodes=1, db_nodes=0)).name
    await add_domain(router.svc, me, env=env, domain="shop.test")
    issued = await obtain_certificate(router.svc, me, domain="shop.test")
    life = issued.not_after - issued.not_before  # pebble's: a second short of 24 hours
    assert timedelta(hours=23, minutes=59) <= life <= timedelta(hours=24)
    opens = issued.not_after - life / 3  # some 8 hours before it expires
    assert issued.renew_at == opens

    # an hour in, and a minute before its window: not renewed
    assert await renew_certificates(router.svc, now=issued.not_before + timedelta(hours=1)) == []
    assert await renew_certificates(router.svc, now=opens - timedelta(minutes=1)) == []
    done = await renew_certificates(router.svc, now=opens)
    assert [(r.domain, r.error) for r in done] == [("shop.test", None)]
    async with router.svc.sessions() as session:
        renewed = await session.get(Certificate, "shop.test")
    assert renewed is not None and renewed.serial == done[0].serial
    assert renewed.renew_at == renewed.not_after - life / 3
    # serve looks again when that is, however long its check interval (a day)
    assert await next_renewal(router.svc) == renewed.renew_at


@pytest.mark.docker
async def test_a_failed_renewal_backs_off_and_a_restarted_serve_orders_nothing_sooner(
    acme: Acme, make_source: MakeSource, caplog: pytest.LogCaptureFixture
) -> None:
    router, me = acme.router, Request(OWNER)
    env = (await make_source(web_nodes=1, db_nodes=0)).name
    await add_domain(router.svc, me, env=env, domain="shop.test")
    issued = await obtain_certificate(router.svc, me, domain="shop.test")
    due = issued.renew_at
    assert due is not None

    async with _unreachable(acme) as dead:
        # tried again an hour on, then two, four...: not at every check
        done = await renew_certificates(dead, now=due)
        assert [(r.domain, r.retry_at) for r in done] == [("shop.test", due + timedelta(hours=1))]
        assert "cannot be reached" in (done[0].error or "")
        assert await renew_certificates(dead, now=due + timedelta(minutes=59)) == []
        done = await renew_certificates(dead, now=due + timedelta(hours=1))
        assert [r.retry_at for r in done] == [due + timedelta(hours=3)]
        assert await _failed_orders(dead) == 2

        # due now; serve started twice (a restart loop): one order, one notice
        await _set(dead, renew_at=utcnow() - timedelta(seconds=1))
        await router.haproxy.stop()  # serve runs its own
        told: list[RenewalNotice] = []

        async def tell(notice: RenewalNotice) -> None:
            told.append(notice)

        for _ in range(2):
            stop = asyncio.Event()
            serving = asyncio.create_task(
                serve(dead, stop=stop, poll_s=0.1, tell=Tellers(renewal=tell))
            )
            try:
                for _ in range(50):  # the look at start, and a few rounds after
                    await asyncio.sleep(0.1)
                    if told:
                        break
                await asyncio.sleep(1)
            finally:
                stop.set()
                await serving
    assert await _failed_orders(router.svc) == 3, "the restart ordered nothing"
    assert [n.domain for n in told] == ["shop.test"]
    assert told[0].error.startswith("the ACME server cannot be reached")
    assert told[0].retry_at is not None and told[0].retry_at > utcnow() + timedelta(hours=3)
    assert "not renewed: the ACME server cannot be reached" in caplog.text


async def _failed_orders(svc: Services) -> int:
    query = select(AuditEntry).where(AuditEntry.action == ORDER_FAILED)
    async with svc.sessions() as session:
        return len((await session.scalars(query)).all())


async def _set(svc: Services, **values: object) -> None:
    async with svc.sessions() as session, session.begin():
        await session.execute(update(Certificate).values(**values))


@pytest.mark.docker
async def test_a_domain_is_not_ordered_again_before_it_is_due_nor_soon_after_a_failed_order(
    acme: Acme, make_source: MakeSource
) -> None:
    router, me = acme.router, Request(OWNER)
    env = (await make_source(web_nodes=1, db_nodes=0)).name
    await add_domain(router.svc, me, env=env, domain="shop.test")
    issued = await obtain_certificate(router.svc, me, domain="shop.test")
    await router.apply()
    orders = _orders(acme.pebble)

    renews = f"renews it from {issued.renew_at:%Y-%m-%d %H:%M} UTC"
    with pytest.raises(BadRequest, match=f"{renews}: no new one ordered .*--force"):
        await obtain_certificate(router.svc, me, domain="shop.test")
    with pytest.raises(Forbidden, match="only an admin may force"):
        await obtain_certificate(router.svc, me, domain="shop.test", force=True)
    assert _orders(acme.pebble) == orders
    forced = await obtain_certificate(router.svc, Request(ADMIN), domain="shop.test", force=True)
    assert forced.serial != issued.serial
    assert await router.serial("shop.test", acme.root) == int(forced.serial, 16)

    # an order that failed: none for that domain for ten minutes, whoever asks
    await add_domain(router.svc, me, env=env, domain="new.test")
    async with _unreachable(acme) as dead:
        with pytest.raises(AcmeFailed, match="cannot be reached"):
            await obtain_certificate(dead, me, domain="new.test")
    orders = _orders(acme.pebble)
    for who in (me, Request(ADMIN)):
        with pytest.raises(BadRequest, match=r"failed at \d\d:\d\d UTC .* try again from"):
            await obtain_certificate(router.svc, who, domain="new.test", force=True)
    assert _orders(acme.pebble) == orders
    # another domain is not held up
    await add_domain(router.svc, me, env=env, domain="other.test")
    assert (await obtain_certificate(router.svc, me, domain="other.test")).source == Source.ACME


@pytest.mark.docker
async def test_a_certificate_haproxy_refuses_is_saved_told_and_served_once_it_can(
    routed: Settings, make_source: MakeSource
) -> None:
    ca, me = LocalCA(), Request(OWNER)
    async with _router(_tls(routed)) as router:
        ca_file = ca.write(router.files.directory / "ca.pem")
        env = (await make_source(web_nodes=1, db_nodes=0)).name
        await add_domain(router.svc, me, env=env, domain="shop.test")
        old, new = ca.issue("shop.test"), ca.issue("shop.test")
        await add_certificate(
            router.svc, me, domain="shop.test", cert_pem=old.cert_pem, key_pem=old.key_pem
        )
        await router.apply()
        api, default = router.haproxy.api, router.files.default_cert

        # HAProxy refuses the new one (another certificate's change is under way), and its
        # reload fails (a configuration it cannot load)
        await api.command(f"set ssl cert {default} <<\n{default.read_text().strip()}\n")
        config = router.files.config.read_text()
        router.files.config.write_text(config + "    no-such-keyword\n")
        saved = await add_certificate(
            router.svc, me, domain="shop.test", cert_pem=new.cert_pem, key_pem=new.key_pem
        )
        assert saved.serial == f"{new.cert.serial_number:X}".zfill(len(saved.serial))
        assert saved.push_at is not None, "saved, to be served after the next reload"
        assert await router.serial("shop.test", ca_file) == old.cert.serial_number

        # what `serve`'s router keeper does every round: given again once it is due
        router.files.config.write_text(config)
        await api.command(f"abort ssl cert {default}")
        assert await push_certificates(router.svc) == 0, "not before a minute"
        assert await push_certificates(router.svc, now=saved.push_at) == 1
        assert await router.serial("shop.test", ca_file) == new.cert.serial_number
        async with router.svc.sessions() as session:
            record = await session.get(Certificate, "shop.test")
        assert record is not None and record.push_at is None
        assert await push_certificates(router.svc, now=saved.push_at) == 0


class _CancelledAtCommit(RuntimeAPI):
    """The runtime API of a task cancelled between ``set ssl cert`` and its commit."""

    async def command(self, line: str) -> str:
        if line.startswith("commit ssl cert"):
            raise asyncio.CancelledError
        return await super().command(line)


@pytest.mark.docker
async def test_a_replacement_cancelled_before_its_commit_leaves_no_change_under_way(
    routed: Settings, make_source: MakeSource
) -> None:
    ca, me = LocalCA(), Request(OWNER)
    async with _router(_tls(routed)) as router:
        ca_file = ca.write(router.files.directory / "ca.pem")
        env = (await make_source(web_nodes=1, db_nodes=0)).name
        await add_domain(router.svc, me, env=env, domain="shop.test")
        old, new = ca.issue("shop.test"), ca.issue("shop.test")
        await add_certificate(
            router.svc, me, domain="shop.test", cert_pem=old.cert_pem, key_pem=old.key_pem
        )
        await router.apply()
        path = router.files.cert_of("shop.test")
        with pytest.raises(asyncio.CancelledError):
            await _CancelledAtCommit(router.files.api).replace_cert(
                path, (new.cert_pem + new.key_pem).decode()
            )
        assert await router.serial("shop.test", ca_file) == old.cert.serial_number
        # HAProxy has one change of certificate at a time: another one goes through
        default = router.files.default_cert
        await router.haproxy.api.replace_cert(default, default.read_text())


@pytest.mark.docker
async def test_serve_says_at_start_when_nothing_will_renew_acme_certificates(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_services(settings) as svc:
        async with svc.sessions() as session, session.begin():
            session.add(_acme_row("shop.test"))
        stop = asyncio.Event()
        stop.set()
        await serve(svc, stop=stop, router=False)
    said = "1 ACME certificate(s) will not be renewed by this serve: CLONEBOT_ACME_DIRECTORY"
    assert f"{said} is not set" in caplog.text
    state = renewal_state(_acme_row("shop.test"), settings)
    assert state is not None and state.next_at is None
    assert state.not_renewed == "CLONEBOT_ACME_DIRECTORY is not set"


def _acme_row(domain: str) -> Certificate:
    now = utcnow()
    return Certificate(
        domain=domain, subject="", issuer="CN=Pebble Intermediate", serial="01",
        not_before=now, not_after=now + timedelta(days=90), fingerprint="0" * 64,
        added_by=OWNER, added_at=now, source=Source.ACME.value,
        renew_at=now + timedelta(days=60), renew_failures=0,
    )  # fmt: skip

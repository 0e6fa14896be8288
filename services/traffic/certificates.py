"""TLS certificates: a custom domain's, added by a person or from ACME; an internal domain's
from ACME, on request; the wildcard of the internal domains, given by the operator; and the
router's own self-signed default. HAProxy serves a name's own certificate before the wildcard.

A certificate belongs to the domain, not to the environment: a swap moves the domain's
traffic and the same certificate keeps being served. The chain and key are one file of the
router folder (``certs/<domain>.pem``, mode 600, in a folder of mode 700), never the database,
a log line or Slack; the database keeps what a person may see (subject, issuer, serial,
validity, fingerprint), who added it and whence (a person, or an ACME server:
``services.traffic.renewals``).

A domain's first certificate is a new entry of the crt-list: a seamless reload. Replacing it
(a person's new one, a renewal) is not: HAProxy takes the new chain and key at once through its
runtime API, and the file keeps them for a restart. A row saved is marked to be pushed
(``Certificate.push_at``) until HAProxy has it: should HAProxy refuse it (and a reload fail too),
or the push be cancelled, `serve`'s router keeper gives it again (``push_certificates``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from services.access import Request
from services.context import Services
from services.errors import BadRequest
from services.permissions import Action
from services.traffic.haproxy import TLS, MasterCLI, RouterFailed, RouterFiles, RuntimeAPI, locked
from services.traffic.routing import (
    domain_holder,
    internal_environment,
    is_internal,
    validate_domain,
)
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import Certificate, DomainBinding, EnvironmentRecord, utcnow

log = logging.getLogger(__name__)
_PEM = serialization.Encoding.PEM
# a certificate HAProxy refused is given again this long after (by `serve`'s router keeper)
PUSH_RETRY = timedelta(minutes=1)


class Source(StrEnum):
    """Whence a domain's certificate came (``Certificate.source``)."""

    MANUAL = "manual"  # a person gave the chain and key
    ACME = "acme"  # issued by CLONEBOT_ACME_DIRECTORY, and renewed


@dataclass(frozen=True)
class KeyPair:
    """A certificate chain (the leaf first) and the leaf's private key, checked together."""

    chain: tuple[x509.Certificate, ...]
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def pem(self) -> bytes:
        """What HAProxy reads: the chain, then the key (unencrypted: HAProxy has no prompt)."""
        key = self.key.private_bytes(
            _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return b"".join(c.public_bytes(_PEM) for c in self.chain) + key


def load_pair(*, cert_pem: bytes, key_pem: bytes) -> KeyPair:
    """The chain and key, or ``BadRequest`` saying in one line what is wrong (never quoting
    the key)."""
    try:
        chain = tuple(x509.load_pem_x509_certificates(cert_pem))
    except ValueError:
        raise BadRequest("the certificate is not PEM (-----BEGIN CERTIFICATE-----)") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise BadRequest("the key has a passphrase: HAProxy needs it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise BadRequest("the key is not a PEM private key (-----BEGIN PRIVATE KEY-----)") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise BadRequest("the key is neither RSA nor ECDSA, the kinds HAProxy serves")
    if _public(chain[0].public_key()) != _public(key.public_key()):
        raise BadRequest("the key does not match the certificate (another public key)")
    return KeyPair(chain, key)


def _public(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(_PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def names_of(cert: x509.Certificate) -> list[str]:
    """The DNS names a certificate is for (its Subject Alternative Name; clients ignore the
    common name when there is one, and browsers always do)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)]


def covers(pattern: str, domain: str) -> bool:
    """Whether a certificate's name is valid for ``domain`` (RFC 6125): the same name, or a
    ``*`` for exactly the whole leftmost label (``*.example.com`` is not ``example.com``,
    nor ``a.b.example.com``)."""
    if pattern == domain:
        return True
    if not pattern.startswith("*.") or "*" in pattern[2:]:
        return False
    first, _, rest = domain.partition(".")
    return bool(first) and rest == pattern[2:]


def check_pair(pair: KeyPair, *, domain: str, now: datetime | None = None) -> None:
    """Refuse a certificate that is not for ``domain`` or not valid now."""
    names = names_of(pair.leaf)
    if not any(covers(name, domain) for name in names):
        listed = ", ".join(names[:5]) or "no DNS name"
        raise BadRequest(f"the certificate is not for {domain}: it names {listed}")
    now = now or datetime.now(UTC)
    if pair.leaf.not_valid_after_utc <= now:
        raise BadRequest(f"the certificate expired on {pair.leaf.not_valid_after_utc:%Y-%m-%d}")
    if pair.leaf.not_valid_before_utc > now:
        raise BadRequest(
            f"the certificate is not valid before {pair.leaf.not_valid_before_utc:%Y-%m-%d %H:%M}"
        )


def check_wildcard(path: Path, *, base_domain: str) -> KeyPair:
    """The operator's wildcard file (chain and key in one PEM), for ``*.<base domain>``."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise BadRequest(f"{path}: {exc.strerror}") from None
    pair = load_pair(cert_pem=text, key_pem=text)
    if not any(covers(n, f"x.{base_domain}") for n in names_of(pair.leaf)):
        raise BadRequest(f"{path} is not a certificate for *.{base_domain}")
    return pair


async def add_certificate(
    svc: Services, request: Request, *, domain: str, cert_pem: bytes, key_pem: bytes
) -> Certificate:
    """Give a bound custom domain its certificate (replacing the one it had), if ``request``
    may move the traffic of the environment the domain is bound to. Nothing is written
    unless the certificate parses, matches the key, covers the domain and is valid now."""
    name = custom_domain(svc, domain)
    pair = load_pair(cert_pem=cert_pem, key_pem=key_pem)
    check_pair(pair, domain=name)
    return await save_certificate(svc, request, domain=name, pair=pair, source=Source.MANUAL)


async def check_may_add(svc: Services, request: Request, *, domain: str) -> None:
    """Refuse unless ``request`` may give ``domain`` (as ``acme_domain`` returns it) a
    certificate: before asking a CA for one."""
    async with svc.sessions() as session:
        await domain_holder(svc, session, request, domain, Action.MOVE_TRAFFIC)


async def save_certificate(
    svc: Services,
    request: Request,
    *,
    domain: str,
    pair: KeyPair,
    source: Source,
    renew_at: datetime | None = None,
) -> Certificate:
    """``pair`` (checked) as ``domain``'s certificate, replacing the one it had, if
    ``request`` may move the traffic of the environment the domain is bound to; ``renew_at``:
    when `serve` renews it (one from ACME). Its ``push_at`` is set if HAProxy did not take it."""
    async with svc.sessions() as session:
        env = await domain_holder(svc, session, request, domain, Action.MOVE_TRAFFIC)
        record = await _save(
            svc, session, domain=domain, pair=pair, by=request.user, source=source,
            renew_at=renew_at, audit=lambda r: _audit(session, request, "cert add", env, r),
        )  # fmt: skip
    assert record is not None  # nothing expected: always saved
    return record


async def renew_certificate(
    svc: Services, *, domain: str, pair: KeyPair, replacing: str, renew_at: datetime
) -> Certificate | None:
    """``pair`` in place of ``domain``'s certificate of fingerprint ``replacing``, in the name
    of whoever added that one, renewed again from ``renew_at``; None when it was replaced or
    removed meanwhile."""
    async with svc.sessions() as session:
        holder = await holding_environment(session, domain, base_domain=svc.settings.base_domain)
        env = holder.name if holder else None

        def audit(record: Certificate) -> None:
            _audit(session, Request(record.added_by), "cert renew", env, record)

        current = await session.get(Certificate, domain)
        by = current.added_by if current else ""
        return await _save(
            svc, session, domain=domain, pair=pair, by=by, source=Source.ACME, audit=audit,
            renew_at=renew_at, expect=replacing,
        )  # fmt: skip


async def _save(
    svc: Services,
    session: AsyncSession,
    *,
    domain: str,
    pair: KeyPair,
    by: str,
    source: Source,
    renew_at: datetime | None,
    audit: Callable[[Certificate], None],
    expect: str | None = None,
) -> Certificate | None:
    """The row, the file and, where HAProxy serves the domain already, HAProxy at once.
    ``expect``: the fingerprint the certificate replaced must have (else None, nothing done)."""
    files = _files(svc)
    pem = pair.pem()
    staged = await asyncio.to_thread(_stage, files, domain, pem)
    # the transaction ends before the router's lock is waited for: a swap holds that lock,
    # then begins one (SQLite's BEGIN IMMEDIATE takes the write lock even to read)
    await session.commit()
    try:
        async with locked(files):
            record = await session.get(Certificate, domain, populate_existing=True)
            if expect is not None and (record is None or record.fingerprint != expect):
                return None
            record = record or Certificate(domain=domain)
            _describe(record, pair.leaf, added_by=by, source=source, renew_at=renew_at)
            # until HAProxy has it: a failure or a cancel from here on leaves it to `serve`
            record.push_at = utcnow()
            session.add(record)
            audit(record)
            await session.commit()
            # under the router's lock: an apply sees the row and its file, or neither
            await asyncio.to_thread(os.replace, staged, files.cert_of(domain))
            await _push(session, files, record, pem)
    finally:
        await asyncio.to_thread(staged.unlink, missing_ok=True)
    return record


async def _push(session: AsyncSession, files: RouterFiles, record: Certificate, pem: bytes) -> None:
    """``record``'s certificate to HAProxy, its ``push_at`` cleared once given; when HAProxy
    refuses it, the row stays saved and ``push_at`` says when to give it again. Call it
    holding the router's lock."""
    try:
        await _serve_replaced(files, record.domain, pem)
    except RouterFailed as exc:
        record.push_at = utcnow() + PUSH_RETRY
        await session.commit()
        log.warning(
            "router: %s; %s's certificate is saved, served after the next reload (given "
            "again at %s)", exc.message, record.domain, f"{record.push_at:%H:%M:%S} UTC",
        )  # fmt: skip
        return
    record.push_at = None
    await session.commit()


async def push_certificates(svc: Services, *, now: datetime | None = None) -> int:
    """Certificates saved but not yet taken by HAProxy (``push_at`` passed) given to it again,
    from their files: `serve`'s router keeper, every round. How many HAProxy took."""
    files = _files(svc)
    query = select(Certificate.domain).where(Certificate.push_at <= (now or utcnow()))
    pushed = 0
    async with svc.sessions() as session:
        due = (await session.scalars(query)).all()
    for domain in due:
        # the router's lock first, then a transaction: the order a swap takes them in
        async with locked(files), svc.sessions() as session:
            record = await session.get(Certificate, domain)
            path = files.cert_of(domain)
            if record is None or record.push_at is None or not path.exists():
                continue
            await _push(session, files, record, await asyncio.to_thread(path.read_bytes))
            if record.push_at is None:
                log.info("router: %s's certificate (serial %s) served", domain, record.serial)
                pushed += 1
    return pushed


async def _serve_replaced(files: RouterFiles, domain: str, pem: bytes) -> None:
    """The certificate a running HAProxy serves for ``domain`` replaced at once, without a
    reload; a domain it serves none for yet gets its own with the next apply (the crt-list
    changes: a reload). Call it holding the router's lock."""
    path = files.cert_of(domain)
    listed = await asyncio.to_thread(_read_lines, files.crt_list)
    if not any(line.split()[:1] == [str(path)] for line in listed):
        return
    master = MasterCLI(files.master)
    if not await master.alive():
        return  # the file is read when it starts
    api = RuntimeAPI(files.api)
    try:
        await api.replace_cert(path, pem.decode())
    except RouterFailed as exc:  # a reload reads the file: served all the same
        log.warning("router: %s; reloading HAProxy for %s's new certificate", exc.message, domain)
        await master.reload(api)


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def remove_certificate(svc: Services, request: Request, *, domain: str) -> Certificate:
    """Take a domain's certificate away (its key file too); its HTTPS is then the default
    certificate's, or refused with strict SNI."""
    name = validate_domain(domain)
    files = _files(svc)
    async with svc.sessions() as session:
        if await session.get(Certificate, name) is None:
            raise BadRequest(f"{name} has no certificate")
        env = await domain_holder(svc, session, request, name, Action.MOVE_TRAFFIC, bound=False)
    # the router's lock first, then a transaction: the order a swap takes them in
    async with locked(files), svc.sessions() as session:
        record = await session.get(Certificate, name)
        if record is None:  # removed meanwhile
            raise BadRequest(f"{name} has no certificate")
        await session.delete(record)
        _audit(session, request, "cert remove", env, record)
        await session.commit()
        await asyncio.to_thread(files.cert_of(name).unlink, missing_ok=True)
    return record


async def get_certificate(svc: Services, request: Request, *, domain: str) -> Certificate:
    """A domain's certificate as a person may see it (never its key), if ``request`` may
    view the environment the domain is bound to."""
    name = validate_domain(domain)
    async with svc.sessions() as session:
        await domain_holder(svc, session, request, name, Action.VIEW, bound=False)
        record = await session.get(Certificate, name)
    if record is None:
        raise BadRequest(f"{name} has no certificate")
    return record


async def list_certificates(svc: Services) -> Sequence[Certificate]:
    """Every domain's certificate, the soonest to expire first: for the host's operator."""
    async with svc.sessions() as session:
        query = select(Certificate).order_by(Certificate.not_after, Certificate.domain)
        return (await session.scalars(query)).all()


def custom_domain(svc: Services, domain: str) -> str:
    """``domain`` as ``routing.validate_domain`` keeps it, refused if it is an internal one."""
    name = validate_domain(domain)
    base = svc.settings.base_domain
    if is_internal(name, base_domain=base):
        raise BadRequest(
            f"{name} is an internal domain: those are served with the wildcard certificate "
            f"of *.{base} (CLONEBOT_TLS_WILDCARD_CERT), or get their own with --acme"
        )
    return name


def acme_domain(svc: Services, domain: str) -> str:
    """``domain`` as ``routing.validate_domain`` keeps it: a custom domain, or an environment's
    internal domain (``<env>.<base domain>``); refused for any other name under the base
    domain, which no environment is served at."""
    name = validate_domain(domain)
    base = svc.settings.base_domain
    if is_internal(name, base_domain=base) and internal_environment(name, base_domain=base) is None:
        raise BadRequest(
            f"{name} is under {base} but is no environment's internal domain (<env>.{base})"
        )
    return name


async def holding_environment(
    session: AsyncSession, domain: str, *, base_domain: str
) -> EnvironmentRecord | None:
    """The recorded environment ``domain`` leads to: the one it is bound to, or for an
    internal domain the environment of that name (none once it is deleted or renamed)."""
    if (name := internal_environment(domain, base_domain=base_domain)) is not None:
        return await repo.get_environment(session, name)
    binding = await session.get(DomainBinding, domain)
    return await session.get(EnvironmentRecord, binding.environment_id) if binding else None


def _describe(
    record: Certificate,
    leaf: x509.Certificate,
    *,
    added_by: str,
    source: Source,
    renew_at: datetime | None,
) -> None:
    serial = f"{leaf.serial_number:X}"
    record.subject = leaf.subject.rfc4514_string()
    record.issuer = leaf.issuer.rfc4514_string()
    record.serial = serial.zfill(len(serial) + len(serial) % 2)
    record.not_before, record.not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    record.fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
    record.added_by, record.added_at = added_by, utcnow()
    record.source = source.value
    record.renew_at, record.renew_failures, record.renew_stopped = renew_at, 0, None


def _audit(
    session: AsyncSession, request: Request, action: str, env: str | None, record: Certificate
) -> None:
    detail = {"domain": record.domain, "serial": record.serial, "sha256": record.fingerprint}
    repo.record_audit(
        session, actor=request.user, action=action, environment=env, channel=request.channel,
        allowed=True, detail=detail,
    )  # fmt: skip


def _files(svc: Services) -> RouterFiles:
    assert svc.settings.router_dir is not None
    return RouterFiles(svc.settings.router_dir)


def _certs_folder(files: RouterFiles) -> Path:
    files.certs.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(files.certs, 0o700)  # mkdir's mode is filtered by the umask
    return files.certs


def _stage(files: RouterFiles, domain: str, pem: bytes) -> Path:
    """``pem`` in a new file of mode 600 beside the domain's (mkstemp's mode)."""
    fd, name = tempfile.mkstemp(dir=_certs_folder(files), prefix=f".{domain}.", suffix=".new")
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return Path(name)


def _install(files: RouterFiles, path: Path, pem: bytes) -> None:
    if path.exists() and path.read_bytes() == pem:
        return
    staged = _stage(files, path.stem, pem)
    os.replace(staged, path)


def default_pair(*, now: datetime | None = None) -> KeyPair:
    """A self-signed certificate for no real name: HAProxy needs one to listen for HTTPS
    before any certificate is added (and serves it when no SNI matches, unless strict)."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clonebot default certificate")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("default.clonebot.invalid")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return KeyPair((cert,), key)


def _prepare(files: RouterFiles, *, wildcard: Path | None, base_domain: str, own: bool) -> None:
    """The default certificate made once, and the map of ACME challenges (the configuration
    reads both); the owner of the router copies in the wildcard its settings name (or takes
    away one it no longer names)."""
    _certs_folder(files)
    if not files.default_cert.exists():
        _install(files, files.default_cert, default_pair().pem())
    files.acme_map.touch(exist_ok=True)
    if not own:
        return
    if wildcard is None:
        files.wildcard_cert.unlink(missing_ok=True)
    else:
        _install(
            files, files.wildcard_cert, check_wildcard(wildcard, base_domain=base_domain).pem()
        )


def _crt_list(files: RouterFiles, domains: Sequence[str], *, base_domain: str) -> tuple[str, str]:
    """The crt-list (each file with the SNI names it is served for) and its digest, over the
    list and the operator's wildcard: a domain's certificate replaced is the same digest (it
    goes to HAProxy through the runtime API, ``_serve_replaced``), a domain added another."""
    entries: list[tuple[Path, str]] = []
    if files.wildcard_cert.exists():
        entries.append((files.wildcard_cert, f"*.{base_domain}"))
    for domain in domains:
        # a row committed a moment before its file is moved in is left for the next apply
        if files.cert_of(domain).exists():
            entries.append((files.cert_of(domain), domain))
    text = "".join(f"{path} {sni}\n" for path, sni in entries)
    digest = hashlib.sha256(text.encode())
    if files.wildcard_cert.exists():  # copied in at the start of `serve`: a reload then is fine
        digest.update(files.wildcard_cert.read_bytes())
    return text, digest.hexdigest()[:16]


async def router_tls(
    svc: Services, *, files: RouterFiles, bind: str, strict_sni: bool, own: bool
) -> TLS:
    """How the router serves HTTPS on ``bind``: every domain's certificate by its SNI name.

    ``own``: this process runs the router, and its settings say how it listens (the
    wildcard certificate among it); another process keeps what the router folder has."""
    async with svc.sessions() as session:
        domains = (await session.scalars(select(Certificate.domain))).all()
    base, wildcard = svc.settings.base_domain, svc.settings.tls_wildcard_cert

    def build() -> TLS:
        _prepare(files, wildcard=wildcard, base_domain=base, own=own)
        text, digest = _crt_list(files, domains, base_domain=base)
        return TLS(bind=bind, crt_list=text, digest=digest, strict_sni=strict_sni)

    return await asyncio.to_thread(build)

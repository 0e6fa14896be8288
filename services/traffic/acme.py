"""The ACME port (RFC 8555): a certificate for one domain, issued by an ACME server through
certbot's ``acme`` library, its HTTP-01 challenge answered by the router itself.

The router answers ``/.well-known/acme-challenge/<token>`` from a map of its own
(``RouterFiles.acme_map``) before any routing, so validation works whichever environment
holds the domain, or none. Entries go to HAProxy through the runtime API and to the file
(for a reload meanwhile), under the router's lock, and are taken away once the order ends.

What the ACME server sends is hostile input: a token reaches HAProxy only if it is base64url,
an authorization only for the domain asked, and the certificate only once it parses, matches
the new key and covers the domain (``certificates.check_pair``, by the caller).

The account key is made once, kept in the router's certificates folder (mode 600, like the
domains' keys) and never logged; a new key is made for every certificate, renewals too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

import requests
from acme import challenges as acme_challenges
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.errors import DeserializationError
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from services.errors import AcmeFailed, BadRequest
from services.traffic.certificates import KeyPair, load_pair
from services.traffic.haproxy import (
    ACME_PATH,
    MasterCLI,
    RouterFailed,
    RouterFiles,
    RuntimeAPI,
    locked,
)

# base64url without padding, at least 128 bits (RFC 8555 §8.3); short enough for one line
TOKEN = re.compile(r"[A-Za-z0-9_-]{22,128}")
# the token, a dot, and the account key's SHA-256 thumbprint in base64url (§8.1)
_KEY_AUTHORIZATION = re.compile(r"[A-Za-z0-9_-]{22,128}\.[A-Za-z0-9_-]{43}")
_T = TypeVar("_T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AcmeServer:
    directory: str  # the directory URL (CLONEBOT_ACME_DIRECTORY)
    account_key: Path
    email: str | None = None
    ca_bundle: Path | None = None  # trusted for the server's own HTTPS; None: the system's
    timeout_s: float = 90.0  # validation and issuance, once the challenge is answered


class Challenges(Protocol):
    """Where HTTP-01 answers are published for the ACME server to fetch."""

    async def publish(self, *, token: str, key_authorization: str) -> None: ...

    async def withdraw(self, *, token: str) -> None: ...


def check_token(token: str) -> str:
    """``token`` if it is base64url (and of a sane length), else ``AcmeFailed``."""
    if not TOKEN.fullmatch(token):
        raise AcmeFailed(
            "the ACME server sent a challenge token that is not base64url (RFC 8555 §8.3): "
            "refused, nothing was published"
        )
    return token


async def issue(server: AcmeServer, *, domain: str, challenges: Challenges) -> KeyPair:
    """A new key and a certificate for it naming ``domain`` alone, from ``server``; the
    HTTP-01 challenge published on ``challenges`` while the order is validated."""
    key = ec.generate_private_key(ec.SECP256R1())
    client = await _call(_client, server)
    published: list[str] = []
    try:
        order = await _call(client.new_order, _csr(key, domain))
        for authorization in order.authorizations:
            challenge = _http01(authorization, domain)
            if challenge is None:
                continue  # valid already (an authorization the server reuses)
            token = check_token(challenge.chall.encode("token"))
            response, validation = challenge.response_and_validation(client.net.key)
            await challenges.publish(token=token, key_authorization=validation)
            published.append(token)
            await _call(client.answer_challenge, challenge, response)
        deadline = datetime.now() + timedelta(seconds=server.timeout_s)  # acme's are naive
        done = await _call(client.poll_and_finalize, order, deadline)
    finally:
        client.net.session.close()
        for token in published:
            await challenges.withdraw(token=token)
    try:
        return load_pair(cert_pem=done.fullchain_pem.encode(), key_pem=_pkcs8(key))
    except BadRequest as exc:
        raise AcmeFailed(f"the ACME server's certificate is refused: {exc.message}") from None


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _http01(
    authorization: messages.AuthorizationResource, domain: str
) -> messages.ChallengeBody | None:
    """The HTTP-01 challenge to answer, None if the authorization is valid already."""
    body = authorization.body
    if body.identifier.value != domain:
        raise AcmeFailed(f"the ACME server asked to validate another name than {domain}")
    if body.status == messages.STATUS_VALID:
        return None
    for challenge in body.challenges:
        if isinstance(challenge.chall, acme_challenges.HTTP01):
            return challenge
    raise AcmeFailed(f"the ACME server offers no HTTP-01 challenge for {domain}")


def _csr(key: ec.EllipticCurvePrivateKey, domain: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _client(server: AcmeServer) -> acme_client.ClientV2:
    """A client of ``server`` with clonebot's account (registered on first use)."""
    net = acme_client.ClientNetwork(
        JWKEC(key=account_key(server.account_key)), alg=ES256, user_agent="clonebot"
    )
    if server.ca_bundle is not None:
        # requests takes a CA bundle's path where acme's annotation says bool
        net.verify_ssl = str(server.ca_bundle)  # type: ignore[assignment]
    client = acme_client.ClientV2(acme_client.ClientV2.get_directory(server.directory, net), net)
    registration = messages.NewRegistration.from_data(
        email=server.email, terms_of_service_agreed=True
    )
    try:
        client.new_account(registration)
    except acme_errors.ConflictError as exc:  # this key's account exists: use it
        net.account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
    return client


def account_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """clonebot's ACME account key, made on first use (mode 600; two processes making one at
    once keep the first)."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        made = _pkcs8(ec.generate_private_key(ec.SECP256R1()))
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
        with os.fdopen(fd, "wb") as out:
            out.write(made)
        try:
            os.link(name, path)  # never over another's
        except FileExistsError:
            pass
        finally:
            os.unlink(name)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None  # the reason is not quoted: it could carry a piece of the file
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AcmeFailed(
            f"{path} is not an unencrypted ECDSA key: remove it, and a new account is made"
        )
    return key


async def _call(call: Callable[..., _T], *args: object) -> _T:
    """``call`` (blocking: HTTP to the ACME server) in a thread, its errors as ``AcmeFailed``."""
    try:
        return await asyncio.to_thread(call, *args)
    except messages.Error as exc:
        raise AcmeFailed(f"the ACME server refused: {exc.detail or exc.typ}") from exc
    except acme_errors.ValidationError as exc:
        raise AcmeFailed(f"the ACME server could not validate: {_why(exc)}") from exc
    except acme_errors.TimeoutError as exc:
        raise AcmeFailed("the ACME server did not issue the certificate in time") from exc
    except (acme_errors.Error, DeserializationError) as exc:
        raise AcmeFailed(f"the ACME server's answer was not understood: {exc}") from exc
    except requests.RequestException as exc:  # its text is urllib3's whole retry story
        url = getattr(exc.request, "url", None)
        url = url if isinstance(url, str) else "its directory URL"
        raise AcmeFailed(
            f"the ACME server cannot be reached at {url} ({type(exc).__name__})"
        ) from exc


def _why(exc: acme_errors.ValidationError) -> str:
    reasons = [
        f"{authz.body.identifier.value}: {challenge.error.detail or challenge.error.typ}"
        for authz in exc.failed_authzrs
        for challenge in authz.body.challenges
        if challenge.error is not None
    ]
    return "; ".join(reasons) or "no reason given"


@dataclass(frozen=True)
class RouterChallenges:
    """HTTP-01 answers published in the router's ACME map: HAProxy first, then the file."""

    files: RouterFiles

    async def ready(self) -> None:
        """Refuse before any order when nothing would answer the challenge."""
        if not await MasterCLI(self.files.master).alive():
            raise AcmeFailed(
                "HAProxy does not run: nothing would answer the ACME server's challenge "
                "(start `clonebot serve`)"
            )
        config = await asyncio.to_thread(_read, self.files.config)
        if f"map({self.files.acme_map})" not in config:
            raise AcmeFailed(
                "the router serves no HTTPS (CLONEBOT_ROUTER_TLS_BIND where `clonebot serve` "
                "runs): it answers no ACME challenge, and would not serve the certificate"
            )

    async def publish(self, *, token: str, key_authorization: str) -> None:
        check_token(token)
        if not _KEY_AUTHORIZATION.fullmatch(key_authorization):
            raise AcmeFailed("a key authorization that is not base64url: refused")
        path, api = ACME_PATH + token, RuntimeAPI(self.files.api)
        async with locked(self.files):
            try:
                await api.set_map_entry(self.files.acme_map, key=path, value=key_authorization)
            except RouterFailed as exc:
                raise AcmeFailed(f"the router cannot answer the challenge: {exc.message}") from exc
            # the file too: a reload while the server validates keeps answering
            await asyncio.to_thread(_edit_map, self.files.acme_map, path, key_authorization)

    async def withdraw(self, *, token: str) -> None:
        """The answer taken away, from the file whatever HAProxy says (it may have stopped:
        it then reads the file when it starts)."""
        path, api = ACME_PATH + check_token(token), RuntimeAPI(self.files.api)
        async with locked(self.files):
            await asyncio.to_thread(_edit_map, self.files.acme_map, path, None)
            try:
                await api.delete_map_entry(self.files.acme_map, key=path)
            except RouterFailed as exc:
                log.warning("router: %s (an ACME answer left in HAProxy's memory)", exc.message)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _edit_map(path: Path, key: str, value: str | None) -> None:
    entries = dict(line.split(" ", 1) for line in _read(path).splitlines() if " " in line)
    if value is None:
        entries.pop(key, None)
    else:
        entries[key] = value
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
    with os.fdopen(fd, "w") as out:
        out.write("".join(f"{k} {v}\n" for k, v in sorted(entries.items())))
    os.replace(name, path)

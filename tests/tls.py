"""A certificate authority of the tests' own, issuing leaf certificates with ``cryptography``
(Debian's minica is not needed): for the tests of HTTPS through the router."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PEM = serialization.Encoding.PEM
NOW = datetime.now(UTC)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )


class LocalCA:
    """A certificate authority of the test's own, issuing leaf certificates."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clonebot test CA")])
        self.cert = (
            _builder(name, name, self.key.public_key(), NOW - timedelta(days=1), days=30)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, *names: str, start: datetime | None = None, days: int = 10) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        start = start or NOW - timedelta(hours=1)
        cert = (
            _builder(subject, self.cert.subject, key.public_key(), start, days=days)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert, key)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(PEM))
        return path


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    start: datetime,
    *,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


async def run_tool(*argv: str, check: bool = True) -> str:
    """A TLS client (curl, openssl) run to its end within 10 s: its output, stdout and stderr
    together; with ``check``, it must succeed."""
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
    if check:
        assert process.returncode == 0, (argv[:3], text[-800:])
    return text


async def served_serial(port: int, servername: str, *, ca: Path | None = None) -> int:
    """The serial of the leaf certificate served on 127.0.0.1:``port`` for this SNI name;
    with ``ca``, its chain verified against it."""
    verify = ["-verify_return_error", "-CAfile", str(ca)] if ca is not None else []
    out = await run_tool(
        "openssl", "s_client", "-servername", servername, *verify,
        "-connect", f"127.0.0.1:{port}",
    )  # fmt: skip
    if ca is not None:
        assert "Verify return code: 0 (ok)" in out, out[-800:]
    found = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    assert found, out[-500:]
    return x509.load_pem_x509_certificate(found.group(0).encode()).serial_number

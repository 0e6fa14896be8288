"""Command-line commands about TLS certificates of custom domains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bot.cli_common import AsUser, JsonFlag, err, out, run
from services.access import Request
from services.certificates import add_certificate, list_certificates, remove_certificate
from services.context import Services
from services.router import apply_now
from storage.models import Certificate

commands = typer.Typer()
cert_app = typer.Typer(help="The TLS certificate of a custom domain.")
commands.add_typer(cert_app, name="cert")


async def _applied(svc: Services) -> str:
    if await apply_now(svc):
        return "HAProxy reloaded with it"
    return "HAProxy does not run: served when it starts"


@cert_app.command("add")
def cert_add(
    domain: str,
    user: AsUser,
    cert: Annotated[Path, typer.Option("--cert", help="PEM: the certificate, then its chain.")],
    key: Annotated[Path, typer.Option("--key", help="PEM: its private key, unencrypted.")],
) -> None:
    """Give a bound custom domain its certificate (replacing the one it had)."""
    try:
        cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
    except OSError as exc:
        err.print(f"[red]error:[/] {exc.filename}: {exc.strerror}", highlight=False)
        raise typer.Exit(1) from None

    async def work(svc: Services) -> str:
        found = await add_certificate(
            svc, Request(user), domain=domain, cert_pem=cert_pem, key_pem=key_pem
        )
        return f"{found.domain}: serial {found.serial}, expires {found.not_after:%Y-%m-%d}; " + (
            await _applied(svc)
        )

    out.print(run(work), highlight=False)


@cert_app.command("remove")
def cert_remove(domain: str, user: AsUser) -> None:
    """Take a domain's certificate (and its key file) away."""

    async def work(svc: Services) -> str:
        found = await remove_certificate(svc, Request(user), domain=domain)
        return f"{found.domain}: certificate removed; {await _applied(svc)}"

    out.print(run(work), highlight=False)


@cert_app.command("show")
def cert_show(domain: str, as_json: JsonFlag = False) -> None:
    """A domain's certificate: subject, issuer, serial, validity, fingerprint (never the key)."""
    found = [c for c in run(list_certificates) if c.domain == domain.strip().lower()]
    if not found:
        err.print(f"[red]error:[/] {domain} has no certificate", highlight=False)
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(_json(found[0]), indent=2))
        return
    for name, value in _json(found[0]).items():
        out.print(f"{name}: {value}", highlight=False)


@commands.command()
def certs(as_json: JsonFlag = False) -> None:
    """Every custom domain's certificate, the soonest to expire first."""
    found = run(list_certificates)
    if as_json:
        print(json.dumps([_json(c) for c in found], indent=2))
        return
    table = Table("domain", "expires", "serial", "issuer")
    for c in found:
        table.add_row(c.domain, f"{c.not_after:%Y-%m-%d}", c.serial, c.issuer)
    out.print(table)


def _json(cert: Certificate) -> dict[str, str]:
    return {
        "domain": cert.domain,
        "subject": cert.subject,
        "issuer": cert.issuer,
        "serial": cert.serial,
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
        "sha256": cert.fingerprint,
        "added_by": cert.added_by,
        "added_at": cert.added_at.isoformat(),
    }

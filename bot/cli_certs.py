"""Command-line commands about TLS certificates of domains."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bot.cli_common import AsUser, JsonFlag, err, load_settings, out, run
from services.access import Request
from services.context import Services
from services.settings import Settings
from services.traffic.certificates import add_certificate, list_certificates, remove_certificate
from services.traffic.domain_https import describe, list_https
from services.traffic.renewals import obtain_certificate, renewal_state
from services.traffic.router import apply_now
from storage.models import Certificate

commands = typer.Typer()
cert_app = typer.Typer(help="The TLS certificate of a domain.")
commands.add_typer(cert_app, name="cert")


async def _applied(svc: Services) -> str:
    if await apply_now(svc):
        return "HAProxy serves it"
    return "HAProxy does not run: served when it starts"


def _added(found: Certificate, settings: Settings) -> str:
    text = f"{found.domain}: serial {found.serial}, expires {found.not_after:%Y-%m-%d}"
    if (state := renewal_state(found, settings)) is not None:
        text += f", issued by ACME, {_renewal(state.next_at, state.not_renewed)}"
    return text


def _renewal(next_at: datetime | None, not_renewed: str | None) -> str:
    if not_renewed is not None or next_at is None:
        return f"not renewed: {not_renewed}"
    return f"renewed from {next_at:%Y-%m-%d}"


@cert_app.command("add")
def cert_add(
    domain: str,
    user: AsUser,
    cert: Annotated[
        Path | None, typer.Option("--cert", help="PEM: the certificate, then its chain.")
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="PEM: its private key, unencrypted.")
    ] = None,
    acme: Annotated[
        bool,
        typer.Option("--acme", help="Get one from the ACME server (CLONEBOT_ACME_DIRECTORY)."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Admins, with --acme: a new one before the one there is due."),
    ] = False,
) -> None:
    """Give a bound custom domain its certificate (replacing the one it had): a person's
    (--cert and --key), or one from an ACME server, which `serve` renews (--acme); an
    environment's internal domain, one from ACME only."""
    pems: tuple[bytes, bytes] | None = None
    if not acme and not force and cert is not None and key is not None:
        pems = _read(cert, key)
    elif not acme or cert is not None or key is not None:
        err.print(
            "[red]refused:[/] give --cert and --key, or --acme alone (--force with --acme)",
            highlight=False,
        )
        raise typer.Exit(2)

    async def work(svc: Services) -> str:
        if pems is None:
            found = await obtain_certificate(svc, Request(user), domain=domain, force=force)
        else:
            found = await add_certificate(
                svc, Request(user), domain=domain, cert_pem=pems[0], key_pem=pems[1]
            )
        if found.push_at is not None:  # HAProxy refused it: `serve` gives it again
            return f"{_added(found, svc.settings)}; saved, served after the next reload"
        return f"{_added(found, svc.settings)}; {await _applied(svc)}"

    out.print(run(work), highlight=False)


def _read(cert: Path, key: Path) -> tuple[bytes, bytes]:
    try:
        return cert.read_bytes(), key.read_bytes()
    except OSError as exc:
        err.print(f"[red]error:[/] {exc.filename}: {exc.strerror}", highlight=False)
        raise typer.Exit(1) from None


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
    https = run(list_https).get(found[0].domain)  # its redirect to HTTPS and HSTS
    settings = load_settings()
    if as_json:
        age = https.hsts_max_age if https else None
        more = {"redirect": bool(https and https.redirect), "hsts_max_age": age}
        print(json.dumps({**_json(found[0], settings), **more}, indent=2))
        return
    for name, value in _json(found[0], settings).items():
        if name not in ("renews_at", "not_renewed"):
            out.print(f"{name}: {value}", highlight=False)
    if (state := renewal_state(found[0], settings)) is not None:
        out.print(f"renewal: {_renewal(state.next_at, state.not_renewed)}", highlight=False)
    out.print(f"https: {describe(https)}", highlight=False)


@commands.command()
def certs(as_json: JsonFlag = False) -> None:
    """Every domain's certificate, the soonest to expire first."""
    found = run(list_certificates)
    if as_json:
        settings = load_settings()
        print(json.dumps([_json(c, settings) for c in found], indent=2))
        return
    table = Table("domain", "expires", "serial", "issuer")
    for c in found:
        table.add_row(c.domain, f"{c.not_after:%Y-%m-%d}", c.serial, c.issuer)
    out.print(table)


def _json(cert: Certificate, settings: Settings) -> dict[str, str | None]:
    state = renewal_state(cert, settings)
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
        "source": cert.source,
        "renews_at": state.next_at.isoformat() if state and state.next_at else None,
        "not_renewed": state.not_renewed if state else None,
    }

"""Certificates from an ACME server: obtained for a custom domain when a person asks
(``clonebot cert add DOMAIN --acme``), renewed by `serve` RENEW_BEFORE they expire.

Asking for one needs the same right as adding one by hand: moving the traffic of the
environment the domain is bound to. A renewal is made in the name of whoever asked first,
and served at once without a reload (``certificates.renew_certificate``); one that fails is
told to that person and to the team of the environment holding the domain (``RenewalNotice``),
and tried again at the next check (CLONEBOT_ACME_RENEW_CHECK), for 30 days.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from services.access import Request
from services.acme import AcmeServer, RouterChallenges, issue
from services.certificates import (
    KeyPair,
    Source,
    check_may_add,
    check_pair,
    custom_domain,
    renew_certificate,
    save_certificate,
)
from services.context import Services
from services.errors import AcmeFailed, BadRequest, ClonebotError
from services.haproxy import RouterFiles
from services.settings import Settings
from storage.models import Certificate, DomainBinding, EnvironmentRecord, utcnow

log = logging.getLogger(__name__)
# Let's Encrypt's advice for its 90-day certificates: a third of their life to retry in
RENEW_BEFORE = timedelta(days=30)


def renews_at(record: Certificate) -> datetime | None:
    """When `serve` renews a certificate; None: it does not (one a person added)."""
    return record.not_after - RENEW_BEFORE if record.source == Source.ACME else None


def acme_server(settings: Settings) -> AcmeServer:
    """The ACME server of the settings, or ``BadRequest`` saying how to name one."""
    if settings.acme_directory is None:
        raise BadRequest(
            "no ACME server is set: set CLONEBOT_ACME_DIRECTORY (and CLONEBOT_ACME_EMAIL), "
            "or add a certificate with --cert and --key"
        )
    assert settings.router_dir is not None
    return AcmeServer(
        directory=settings.acme_directory,
        account_key=RouterFiles(settings.router_dir).certs / "acme-account.key",
        email=settings.acme_email,
        ca_bundle=settings.acme_ca_bundle,
    )


async def obtain_certificate(svc: Services, request: Request, *, domain: str) -> Certificate:
    """A certificate for a bound custom domain from the ACME server, served at once (a new
    domain: with the next apply), if ``request`` may move the traffic of its environment.
    The right is checked before the CA is asked, and again before the certificate is kept."""
    name = custom_domain(svc, domain)
    server = acme_server(svc.settings)
    await check_may_add(svc, request, domain=name)
    pair = await _issue(svc, server, name)
    return await save_certificate(svc, request, domain=name, pair=pair, source=Source.ACME)


@dataclass(frozen=True)
class Renewal:
    domain: str
    serial: str | None  # the new certificate's; None when it failed, or went meanwhile
    error: str | None = None
    expires_at: datetime | None = None  # when it failed: when the one served expires
    added_by: str = ""


@dataclass(frozen=True)
class RenewalNotice:
    """A renewal that failed, for whoever asked for the certificate and for the team of the
    environment holding the domain (none: the default channel); the front door words it."""

    domain: str
    added_by: str
    expires_at: datetime
    error: str
    environment: str | None
    channel: str | None  # that environment's own notify channel, if it has one


RenewalSink = Callable[[RenewalNotice], Awaitable[None]]


async def ignore_notices(notice: RenewalNotice) -> None:
    """Where no Slack listens: the log has said it already (``sweep_renewals``)."""


async def renew_certificates(svc: Services, *, now: datetime | None = None) -> list[Renewal]:
    """Every ACME certificate expiring within RENEW_BEFORE of ``now`` renewed, one after
    another; one that fails does not stop the others."""
    server = acme_server(svc.settings)
    done: list[Renewal] = []
    for record in await _due(svc, now=now or utcnow()):
        try:
            pair = await _issue(svc, server, record.domain)
            saved = await renew_certificate(
                svc, domain=record.domain, pair=pair, replacing=record.fingerprint
            )
        except ClonebotError as exc:
            failed = Renewal(record.domain, None, exc.message, record.not_after, record.added_by)
            done.append(failed)
            continue
        done.append(Renewal(record.domain, saved.serial if saved else None))
    return done


async def sweep_renewals(svc: Services, *, notify: RenewalSink = ignore_notices) -> None:
    """`serve`'s check: renew what is due; say what was done in the log, and tell of a
    renewal that failed."""
    for renewal in await renew_certificates(svc):
        if renewal.error is None:
            if renewal.serial is not None:
                log.info("certificate of %s renewed: serial %s", renewal.domain, renewal.serial)
            continue
        log.warning(
            "certificate of %s not renewed: %s; trying again at the next check",
            renewal.domain, renewal.error,
        )  # fmt: skip
        await notify(await _notice(svc, renewal))


async def _notice(svc: Services, renewal: Renewal) -> RenewalNotice:
    assert renewal.error is not None and renewal.expires_at is not None
    async with svc.sessions() as session:
        binding = await session.get(DomainBinding, renewal.domain)
        env = await session.get(EnvironmentRecord, binding.environment_id) if binding else None
    return RenewalNotice(
        renewal.domain, renewal.added_by, renewal.expires_at, renewal.error,
        env.name if env else None, env.notify_channel if env else None,
    )  # fmt: skip


async def _due(svc: Services, *, now: datetime) -> Sequence[Certificate]:
    query = select(Certificate).where(
        Certificate.source == Source.ACME.value, Certificate.not_after <= now + RENEW_BEFORE
    )
    async with svc.sessions() as session:
        return (await session.scalars(query.order_by(Certificate.not_after))).all()


async def _issue(svc: Services, server: AcmeServer, domain: str) -> KeyPair:
    assert svc.settings.router_dir is not None
    challenges = RouterChallenges(RouterFiles(svc.settings.router_dir))
    await challenges.ready()
    pair = await issue(server, domain=domain, challenges=challenges)
    try:
        check_pair(pair, domain=domain)  # the server's answer is checked like a person's
    except BadRequest as exc:
        raise AcmeFailed(f"the ACME server's certificate is refused: {exc.message}") from None
    return pair

"""Certificates from an ACME server: obtained for a custom domain, or an environment's internal
domain, when a person asks (``clonebot cert add DOMAIN --acme``; never for every clone on its
own: a CA's rate limits, such as Let's Encrypt's 50 a week per registered domain, would be
met), renewed by `serve` once a third of their life is left, at most 30 days before they
expire (``renewal_window``: a 90-day one 30 days before, a 24-hour one 8 hours before).

Asking for one needs the same right as adding one by hand: moving the traffic of the
environment the domain is bound to. The shared ACME account is spared: no new order for a
domain whose ACME certificate is not due for renewal (an admin may force one), nor within
COOLDOWN of a failed order for it (the audit log keeps those: ORDER_FAILED).

`serve`'s check (``sweep_renewals``) takes when each certificate is next tried from the database
(``Certificate.renew_at``), never from its own memory: a restart renews nothing sooner. A
renewal is made in the name of whoever asked first and served at once without a reload
(``certificates.renew_certificate``). One that fails is told to that person and to the team of
the environment holding the domain (``RenewalNotice``) and tried again after a backoff
(``retry_after``). One that has expired, or whose domain is bound to no environment any more
(an internal domain: its environment was deleted or renamed), is not tried again: told once,
it waits for a person's ``cert add --acme``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from services.access import Request
from services.context import Services
from services.errors import AcmeFailed, BadRequest, ClonebotError, Forbidden
from services.settings import Settings
from services.traffic.acme import AcmeServer, RouterChallenges, issue
from services.traffic.certificates import (
    KeyPair,
    Source,
    acme_domain,
    check_may_add,
    check_pair,
    holding_environment,
    renew_certificate,
    save_certificate,
)
from services.traffic.haproxy import RouterFiles
from services.traffic.routing import internal_environment
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import AuditEntry, Certificate, EnvironmentRecord, utcnow

log = logging.getLogger(__name__)
# Let's Encrypt's advice for its 90-day certificates: a third of their life to retry in
MOST_BEFORE = timedelta(days=30)
# after a failed renewal: then twice as long after each failure, at most the check interval
FIRST_RETRY = timedelta(hours=1)
# no new order for a domain this soon after a failed one (CAs limit failed validations)
COOLDOWN = timedelta(minutes=10)
ORDER_FAILED = "cert order failed"  # the audit log's action: what COOLDOWN reads


def renewal_window(*, not_before: datetime, not_after: datetime) -> timedelta:
    """How long before it expires a certificate is renewed: a third of its lifetime, at most
    MOST_BEFORE."""
    return min((not_after - not_before) / 3, MOST_BEFORE)


def window_opens(record: Certificate) -> datetime:
    """When a certificate becomes due for renewal."""
    return record.not_after - renewal_window(
        not_before=record.not_before, not_after=record.not_after
    )


def _first_renewal(pair: KeyPair) -> datetime:
    leaf = pair.leaf
    before, after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    return after - renewal_window(not_before=before, not_after=after)


def retry_after(failures: int, *, check_s: float) -> timedelta:
    """How long after its ``failures``-th failure in a row a renewal is tried again:
    FIRST_RETRY, doubling, at most the check interval (CLONEBOT_ACME_RENEW_CHECK)."""
    doubled = FIRST_RETRY * (1 << max(0, min(failures - 1, 20)))
    return min(doubled, timedelta(seconds=check_s))


@dataclass(frozen=True)
class RenewalState:
    """What `serve` does about an ACME certificate, as these settings see it."""

    next_at: datetime | None  # when it is next tried; None: it is not renewed
    failures: int  # failed renewals in a row
    not_renewed: str | None = None  # why it is not, when it is not


def renewal_state(record: Certificate, settings: Settings) -> RenewalState | None:
    """None for a person's certificate (never renewed)."""
    if record.source != Source.ACME:
        return None
    if record.renew_stopped is not None:
        return RenewalState(None, record.renew_failures, record.renew_stopped)
    if settings.acme_directory is None:
        return RenewalState(None, record.renew_failures, "CLONEBOT_ACME_DIRECTORY is not set")
    return RenewalState(record.renew_at, record.renew_failures)


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


async def obtain_certificate(
    svc: Services, request: Request, *, domain: str, force: bool = False
) -> Certificate:
    """A certificate for a bound custom domain, or an environment's internal domain, from the
    ACME server, served at once (a new
    domain: with the next apply), if ``request`` may move the traffic of its environment.
    The right is checked before the CA is asked, and again before the certificate is kept.

    Refused while the domain's ACME certificate is not due for renewal (``force``: an admin
    asks for a new one all the same), and within COOLDOWN of a failed order."""
    name = acme_domain(svc, domain)
    server = acme_server(svc.settings)
    await check_may_add(svc, request, domain=name)
    await _check_may_order(svc, request, domain=name, force=force)
    pair = await _issue(svc, server, name, by=request)
    return await save_certificate(
        svc, request, domain=name, pair=pair, source=Source.ACME, renew_at=_first_renewal(pair)
    )


async def _check_may_order(svc: Services, request: Request, *, domain: str, force: bool) -> None:
    now = utcnow()
    async with svc.sessions() as session:
        current = await session.get(Certificate, domain)
        failed = await _last_failure(session, domain=domain, since=now - COOLDOWN)
    if failed is not None:
        raise BadRequest(
            f"the last ACME order for {domain} failed at {failed.at:%H:%M} UTC ({failed.reason}); "
            f"to spare the shared ACME account, try again from {failed.at + COOLDOWN:%H:%M} UTC"
        )
    if current is None or current.source != Source.ACME or current.renew_stopped is not None:
        return
    opens = window_opens(current)
    if now >= opens:
        return
    renews = f"`serve` renews it from {opens:%Y-%m-%d %H:%M} UTC"
    if not force:
        raise BadRequest(
            f"{domain} has an ACME certificate until {current.not_after:%Y-%m-%d %H:%M} UTC and "
            f"{renews}: no new one ordered (an admin may force one with --force)"
        )
    if request.user not in svc.settings.admins:
        raise Forbidden(f"only an admin may force a new ACME certificate for {domain}: {renews}")


async def _last_failure(
    session: AsyncSession, *, domain: str, since: datetime
) -> AuditEntry | None:
    query = select(AuditEntry).where(AuditEntry.action == ORDER_FAILED, AuditEntry.at >= since)
    for entry in (await session.scalars(query.order_by(AuditEntry.at.desc()))).all():
        if entry.detail.get("domain") == domain:
            return entry
    return None


@dataclass(frozen=True)
class Renewal:
    domain: str
    serial: str | None = None  # the new certificate's; None: failed, stopped, or went meanwhile
    error: str | None = None  # why it failed, or why it is no longer renewed
    expires_at: datetime | None = None  # when it failed: when the one served expires
    added_by: str = ""
    retry_at: datetime | None = None  # when it failed: when it is tried again; None: never
    pending: bool = False  # renewed and saved, HAProxy not given it yet (`serve` will)


@dataclass(frozen=True)
class RenewalNotice:
    """A renewal that failed, or stopped, for whoever asked for the certificate and for the
    team of the environment holding the domain (none: the default channel); the front door
    words it."""

    domain: str
    added_by: str
    expires_at: datetime
    error: str
    environment: str | None
    channel: str | None  # that environment's own notify channel, if it has one
    retry_at: datetime | None = None  # when it is tried again; None: no more (told once)


RenewalSink = Callable[[RenewalNotice], Awaitable[None]]


async def ignore_notices(notice: RenewalNotice) -> None:
    """Where no Slack listens: the log has said it already (``sweep_renewals``)."""


async def renew_certificates(svc: Services, *, now: datetime | None = None) -> list[Renewal]:
    """Every ACME certificate whose next attempt (``renew_at``) has come by ``now`` renewed,
    one after another; one that fails does not stop the others."""
    server = acme_server(svc.settings)
    now = now or utcnow()
    return [await _renew(svc, server, record, now=now) for record in await _due(svc, now=now)]


async def _renew(
    svc: Services, server: AcmeServer, record: Certificate, *, now: datetime
) -> Renewal:
    domain, expires, by = record.domain, record.not_after, record.added_by
    why_not = await _why_not(svc, record, now=now)
    if why_not is not None:
        await _set_renewal(svc, record, renew_at=None, renew_stopped=why_not)
        return Renewal(domain, error=why_not, expires_at=expires, added_by=by)
    try:
        pair = await _issue(svc, server, domain, by=Request(by))
        saved = await renew_certificate(
            svc, domain=domain, pair=pair, replacing=record.fingerprint,
            renew_at=_first_renewal(pair),
        )  # fmt: skip
    except ClonebotError as exc:
        failures = record.renew_failures + 1
        retry_at = now + retry_after(failures, check_s=svc.settings.acme_renew_check_s)
        await _set_renewal(svc, record, renew_at=retry_at, renew_failures=failures)
        return Renewal(domain, None, exc.message, expires, by, retry_at)
    if saved is None:
        return Renewal(domain)
    return Renewal(domain, saved.serial, pending=saved.push_at is not None)


async def _why_not(svc: Services, record: Certificate, *, now: datetime) -> str | None:
    """Why a due certificate is not to be renewed any more, if it is not."""
    if record.not_after <= now:
        return f"it expired on {record.not_after:%Y-%m-%d %H:%M} UTC"
    async with svc.sessions() as session:
        if await _holding(svc, session, record.domain) is not None:
            return None
    base = svc.settings.base_domain
    if (env := internal_environment(record.domain, base_domain=base)) is not None:
        return f"{record.domain}'s environment {env} is gone (deleted or renamed)"
    return f"{record.domain} is bound to no environment any more"


async def _set_renewal(svc: Services, record: Certificate, **values: object) -> None:
    """The renewal's state of ``record``, unless its certificate was replaced meanwhile."""
    query = update(Certificate).where(
        Certificate.domain == record.domain, Certificate.fingerprint == record.fingerprint
    )
    async with svc.sessions() as session, session.begin():
        await session.execute(query.values(**values))


async def sweep_renewals(svc: Services, *, notify: RenewalSink = ignore_notices) -> datetime | None:
    """`serve`'s check: renew what is due; say what was done in the log, and tell of a
    renewal that failed or stopped. Returns when the next one is due (None: none is)."""
    for renewal in await renew_certificates(svc):
        if renewal.error is None:
            if renewal.serial is not None:
                pending = "; saved, served after the next reload" if renewal.pending else ""
                log.info(
                    "certificate of %s renewed: serial %s%s",
                    renewal.domain,
                    renewal.serial,
                    pending,
                )
            continue
        if renewal.retry_at is None:
            log.warning(
                "certificate of %s no longer renewed: %s; a new one: `clonebot cert add %s --acme`",
                renewal.domain, renewal.error, renewal.domain,
            )  # fmt: skip
        else:
            log.warning(
                "certificate of %s not renewed: %s; trying again at %s",
                renewal.domain, renewal.error, f"{renewal.retry_at:%Y-%m-%d %H:%M:%S} UTC",
            )  # fmt: skip
        await notify(await _notice(svc, renewal))
    return await next_renewal(svc)


async def next_renewal(svc: Services) -> datetime | None:
    """When the next ACME certificate is due for an attempt (None: none will be)."""
    async with svc.sessions() as session:
        return await session.scalar(select(func.min(Certificate.renew_at)))


async def unrenewed(svc: Services) -> int:
    """How many ACME certificates `serve` is meant to renew (none of them stopped)."""
    query = select(func.count()).where(
        Certificate.source == Source.ACME.value, Certificate.renew_stopped.is_(None)
    )
    async with svc.sessions() as session:
        return int(await session.scalar(query) or 0)


async def _notice(svc: Services, renewal: Renewal) -> RenewalNotice:
    assert renewal.error is not None and renewal.expires_at is not None
    async with svc.sessions() as session:
        env = await _holding(svc, session, renewal.domain)
    return RenewalNotice(
        renewal.domain, renewal.added_by, renewal.expires_at, renewal.error,
        env.name if env else None, env.notify_channel if env else None, renewal.retry_at,
    )  # fmt: skip


async def _due(svc: Services, *, now: datetime) -> Sequence[Certificate]:
    query = select(Certificate).where(
        Certificate.source == Source.ACME.value, Certificate.renew_at <= now
    )
    async with svc.sessions() as session:
        return (await session.scalars(query.order_by(Certificate.renew_at))).all()


async def _issue(svc: Services, server: AcmeServer, domain: str, *, by: Request) -> KeyPair:
    """A new order; one that fails is kept in the audit log (``COOLDOWN``)."""
    assert svc.settings.router_dir is not None
    challenges = RouterChallenges(RouterFiles(svc.settings.router_dir))
    await challenges.ready()  # nothing asked of the CA yet: no failed order
    try:
        pair = await issue(server, domain=domain, challenges=challenges)
        try:
            check_pair(pair, domain=domain)  # the server's answer is checked like a person's
        except BadRequest as exc:
            raise AcmeFailed(f"the ACME server's certificate is refused: {exc.message}") from None
    except AcmeFailed as exc:
        await _record_failure(svc, by, domain=domain, error=exc.message)
        raise
    return pair


async def _record_failure(svc: Services, request: Request, *, domain: str, error: str) -> None:
    async with svc.sessions() as session, session.begin():
        env = await _holding(svc, session, domain)
        repo.record_audit(
            session, actor=request.user, action=ORDER_FAILED, environment=env.name if env else None,
            channel=request.channel, allowed=True, reason=error, detail={"domain": domain},
        )  # fmt: skip


async def _holding(svc: Services, session: AsyncSession, domain: str) -> EnvironmentRecord | None:
    return await holding_environment(session, domain, base_domain=svc.settings.base_domain)

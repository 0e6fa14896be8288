"""A custom domain's HTTPS: its plain HTTP redirected to HTTPS, and HSTS; both off by default.

Like its certificate, they belong to the domain, not to the environment: a swap moves the
domain's traffic and it keeps them. HAProxy acts on them only where it serves HTTPS and the
domain has a certificate of its own (a visitor redirected to the self-signed default would
meet a warning, and a browser ignores HSTS on such a connection); until then they are kept.

HAProxy reads two maps (``RouterFiles.redirects``, ``RouterFiles.hsts``; the lines that use
them: ``haproxy._https_lines``), changed through its runtime API, without a reload.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from services import access
from services.access import Request
from services.context import Services
from services.errors import BadRequest, Forbidden
from services.haproxy import MasterCLI, RouterFiles, RuntimeAPI, locked, render_map
from services.permissions import Action
from services.routing import is_internal, validate_domain
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import DomainBinding, DomainHttps, EnvironmentRecord, utcnow

MAX_AGE_LIMIT = 2**31 - 1  # HAProxy's and the database's integers


@dataclass(frozen=True)
class HttpsMaps:
    """What HAProxy acts on: domain -> "1" (redirected), domain -> max-age (HSTS)."""

    redirects: dict[str, str]
    hsts: dict[str, str]


@dataclass(frozen=True)
class HttpsState:
    """A domain's redirect and HSTS as set, and whether HAProxy acts on them now."""

    domain: str
    redirect: bool
    hsts_max_age: int | None  # None: no HSTS
    # None when no HAProxy answered (the files say it; it reads them when it starts)
    in_effect: bool | None


async def set_https(
    svc: Services,
    request: Request,
    *,
    domain: str,
    redirect: bool | None = None,
    hsts: bool | None = None,
    hsts_max_age: int | None = None,
) -> HttpsState:
    """Turn a bound custom domain's redirect and HSTS on or off (None: as they are), if
    ``request`` may move the traffic of its environment; then HAProxy's maps, at once.

    ``hsts_max_age`` turns HSTS on with that max-age; ``hsts`` alone keeps the max-age it has,
    or takes CLONEBOT_HSTS_MAX_AGE. Max-age 0 tells browsers to forget the domain's HSTS.
    """
    name = _custom(svc, domain)
    if redirect is None and hsts is None and hsts_max_age is None:
        raise BadRequest("say what to change: redirect on or off, HSTS on or off")
    if hsts_max_age is not None and (hsts is False or not 0 <= hsts_max_age <= MAX_AGE_LIMIT):
        raise BadRequest(
            f"an HSTS max-age is seconds from 0 to {MAX_AGE_LIMIT} (a year: 31536000), "
            "given with HSTS on"
        )
    async with svc.sessions() as session:
        env = await _holder(svc, session, request, name, Action.MOVE_TRAFFIC, bound=True)
        record = await session.get(DomainHttps, name) or DomainHttps(domain=name, redirect=False)
        if redirect is not None:
            record.redirect = redirect
        if hsts is False:
            record.hsts_max_age = None
        elif hsts_max_age is not None:
            record.hsts_max_age = hsts_max_age
        elif hsts and record.hsts_max_age is None:
            record.hsts_max_age = svc.settings.hsts_max_age
        record.changed_by, record.changed_at = request.user, utcnow()
        session.add(record)
        _audit(session, request, env, record)
        await session.commit()
    maps, running = await apply_https_maps(svc, files=_files(svc))
    return _state(record, maps, running=running)


async def get_https(svc: Services, request: Request, *, domain: str) -> HttpsState:
    """A domain's redirect and HSTS (off when never set), if ``request`` may view the
    environment it is bound to (an admin, if bound to none)."""
    name = validate_domain(domain)
    async with svc.sessions() as session:
        await _holder(svc, session, request, name, Action.VIEW, bound=False)
        record = await session.get(DomainHttps, name)
    maps = await asyncio.to_thread(_read_maps, _files(svc))  # each file replaced whole
    return _state(record or DomainHttps(domain=name, redirect=False), maps, running=True)


async def list_https(svc: Services) -> dict[str, DomainHttps]:
    """Every domain's redirect and HSTS that was ever set, by domain: for the host's operator."""
    async with svc.sessions() as session:
        rows = (await session.scalars(select(DomainHttps))).all()
    return {row.domain: row for row in rows}


def describe(found: HttpsState | DomainHttps | None) -> str:
    """``redirect on, HSTS max-age=31536000``: how the command line shows them."""
    if found is None:
        return "redirect off, HSTS off"
    hsts = "off" if found.hsts_max_age is None else f"max-age={found.hsts_max_age}"
    return f"redirect {'on' if found.redirect else 'off'}, HSTS {hsts}"


def _state(record: DomainHttps, maps: HttpsMaps, *, running: bool) -> HttpsState:
    wanted = record.redirect or record.hsts_max_age is not None
    acted = record.domain in maps.redirects or record.domain in maps.hsts
    return HttpsState(
        record.domain, record.redirect, record.hsts_max_age,
        in_effect=(acted or not wanted) if running else None,
    )  # fmt: skip


# -- HAProxy's maps ---------------------------------------------------------------------------
async def https_maps(svc: Services, *, files: RouterFiles, serving_tls: bool) -> HttpsMaps:
    """The maps for the database's settings: only domains with a certificate file, and none
    when the router does not serve HTTPS."""
    if not serving_tls:
        return HttpsMaps({}, {})
    async with svc.sessions() as session:
        rows = (await session.scalars(select(DomainHttps))).all()
    certified = await asyncio.to_thread(
        lambda: {r.domain for r in rows if files.cert_of(r.domain).exists()}
    )
    ready = [r for r in rows if r.domain in certified]
    return HttpsMaps(
        redirects={r.domain: "1" for r in ready if r.redirect},
        hsts={r.domain: str(r.hsts_max_age) for r in ready if r.hsts_max_age is not None},
    )


async def write_https_maps(svc: Services, *, files: RouterFiles, serving_tls: bool) -> HttpsMaps:
    """The maps' files brought to the database, for an HAProxy about to read them (a start,
    a reload): ``router_config`` calls it. Call it holding the router's lock."""
    maps = await https_maps(svc, files=files, serving_tls=serving_tls)
    await asyncio.to_thread(_write_maps, files, maps)
    return maps


async def apply_https_maps(svc: Services, *, files: RouterFiles) -> tuple[HttpsMaps, bool]:
    """The maps brought to the database, in the files and in a running HAProxy whose
    configuration reads them (each map replaced in one atomic step: no reload); and whether
    an HAProxy answered."""
    async with locked(files):
        config = await asyncio.to_thread(_read, files.config)
        serving = str(files.redirects) in config  # the configuration HAProxy runs now
        maps = await write_https_maps(svc, files=files, serving_tls=serving)
        if not await MasterCLI(files.master).alive():
            return maps, False
        if serving:
            api = RuntimeAPI(files.api)
            await api.replace_map(files.redirects, maps.redirects)
            await api.replace_map(files.hsts, maps.hsts)
        return maps, True


def _write_maps(files: RouterFiles, maps: HttpsMaps) -> None:
    files.directory.mkdir(parents=True, exist_ok=True)
    for path, entries in ((files.redirects, maps.redirects), (files.hsts, maps.hsts)):
        text = render_map(entries)
        if path.exists() and path.read_text() == text:
            continue
        staged = path.with_name(f".{path.name}.new")
        staged.write_text(text)
        os.replace(staged, path)


def _read_maps(files: RouterFiles) -> HttpsMaps:
    return HttpsMaps(_entries(files.redirects), _entries(files.hsts))


def _entries(path: Path) -> dict[str, str]:
    pairs = (line.split() for line in _read(path).splitlines())
    return {words[0]: words[1] for words in pairs if len(words) == 2}


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# -- who may ----------------------------------------------------------------------------------
def _custom(svc: Services, domain: str) -> str:
    name = validate_domain(domain)
    if _internal(svc, name):
        raise BadRequest(
            f"{name} is an internal domain: a redirect and HSTS are set on a custom domain "
            "(one bound with `domain add`), with a certificate of its own"
        )
    return name


def _internal(svc: Services, domain: str) -> bool:
    return is_internal(domain, base_domain=svc.settings.base_domain)


async def _holder(
    svc: Services,
    session: AsyncSession,
    request: Request,
    domain: str,
    action: Action,
    *,
    bound: bool,
) -> str | None:
    """The environment ``domain`` is bound to, once ``request`` may do ``action`` to it (as a
    certificate's: ``certificates._holder``). Bound to none: refused with ``bound``, else for
    admins alone."""
    binding = await session.get(DomainBinding, domain)
    record = await session.get(EnvironmentRecord, binding.environment_id) if binding else None
    if record is None:
        if bound:
            raise BadRequest(f"{domain} is bound to no environment: bind it first (domain add)")
        if request.user not in svc.settings.admins:
            reason = f"{domain} is bound to no environment: only an admin may do this"
            repo.record_audit(
                session, actor=request.user, action=action.value, environment=None,
                channel=request.channel, allowed=False, reason=reason,
            )  # fmt: skip
            await session.commit()
            raise Forbidden(reason)
        return None
    await access.check_recorded(svc, session, request, name=record.name, action=action)
    return record.name


def _audit(session: AsyncSession, request: Request, env: str | None, record: DomainHttps) -> None:
    hsts = "off" if record.hsts_max_age is None else str(record.hsts_max_age)
    detail: Mapping[str, str] = {
        "domain": record.domain, "redirect": "on" if record.redirect else "off", "hsts": hsts,
    }  # fmt: skip
    repo.record_audit(
        session, actor=request.user, action="domain https", environment=env,
        channel=request.channel, allowed=True, detail=dict(detail),
    )  # fmt: skip


def _files(svc: Services) -> RouterFiles:
    assert svc.settings.router_dir is not None
    return RouterFiles(svc.settings.router_dir)

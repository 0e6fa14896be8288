"""A custom domain's HTTPS: its plain HTTP redirected to HTTPS, and HSTS; both off by default.

Like its certificate, they belong to the domain, not to the environment: a swap moves the
domain's traffic and it keeps them. HAProxy acts on them only where it serves HTTPS, the
domain is bound to an environment, and HAProxy serves the domain's own certificate (its
crt-list as loaded, not the file: a visitor redirected to the self-signed default would meet
a warning, and a browser ignores HSTS on such a connection); until then they are kept.

Whoever may move the traffic of every environment the domain leads to (its route's two, for
a split or a failover) may set them, with an HSTS max-age of up to a year; beyond that, and
for a domain bound to none, an admin.

HAProxy reads two maps (``RouterFiles.redirects``, ``RouterFiles.hsts``; the lines that use
them: ``haproxy._https_lines``), changed through its runtime API, without a reload.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from sqlalchemy import select

from services import access
from services.access import Request
from services.context import Services
from services.errors import BadRequest, Forbidden
from services.permissions import Action
from services.traffic.haproxy import MasterCLI, RouterFiles, RuntimeAPI, locked, render_map
from services.traffic.routing import domain_holder, is_internal, validate_domain
from storage import repositories as repo
from storage.db import AsyncSession
from storage.models import DomainBinding, DomainHttps, EnvironmentRecord, Route, utcnow

MAX_AGE_LIMIT = 2**31 - 1  # HAProxy's and the database's integers
# a browser keeps a domain's HSTS this long: longer is an admin's choice
MAX_AGE_UNLESS_ADMIN = 31_536_000
_SECONDS = re.compile(r"[0-9]{1,10}")


def parse_max_age(text: str) -> int | None:
    """An HSTS max-age as a person types it (ASCII digits alone); None if it is not one."""
    return int(text) if _SECONDS.fullmatch(text) else None


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
    """Turn a custom domain's redirect and HSTS on or off (None: as they are), if ``request``
    may move the traffic of every environment it leads to (an admin, for a domain bound to
    none: to turn off what a domain unbound keeps); then HAProxy's maps, at once.

    ``hsts_max_age`` turns HSTS on with that max-age; ``hsts`` alone keeps the max-age it has,
    or takes CLONEBOT_HSTS_MAX_AGE. Max-age 0 tells browsers to forget the domain's HSTS. A
    new max-age over a year (``MAX_AGE_UNLESS_ADMIN``) is for admins.
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
        env = await domain_holder(svc, session, request, name, Action.MOVE_TRAFFIC, bound=False)
        await _route_holders(svc, session, request, name, holder=env)
        record = await session.get(DomainHttps, name) or DomainHttps(domain=name, redirect=False)
        age = None if hsts is False else hsts_max_age
        if age is None and hsts and record.hsts_max_age is None:
            age = svc.settings.hsts_max_age
        if age is not None:  # checked before anything changes: a refusal commits its audit
            await _check_max_age(svc, session, request, env, age=age, named=hsts_max_age)
        if redirect is not None:
            record.redirect = redirect
        if hsts is False or age is not None:
            record.hsts_max_age = age
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
        env = await domain_holder(svc, session, request, name, Action.VIEW, bound=False)
        record = await session.get(DomainHttps, name)
    maps = await asyncio.to_thread(_read_maps, _files(svc))  # each file replaced whole
    if env is None:  # unbound since the maps were last written: HAProxy acts on it no more
        maps = HttpsMaps({}, {})
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
async def https_maps(svc: Services, *, files: RouterFiles, listed: str | None) -> HttpsMaps:
    """The maps for the database's settings, for an HAProxy serving the crt-list ``listed``
    (its text; None: it serves no HTTPS): only domains bound to an environment and given
    their own certificate by that list."""
    if listed is None:
        return HttpsMaps({}, {})
    served = served_domains(files, listed)
    query = select(DomainHttps).join(DomainBinding, DomainBinding.domain == DomainHttps.domain)
    async with svc.sessions() as session:
        rows = (await session.scalars(query)).all()
    ready = [r for r in rows if r.domain in served]
    return HttpsMaps(
        redirects={r.domain: "1" for r in ready if r.redirect},
        hsts={r.domain: str(r.hsts_max_age) for r in ready if r.hsts_max_age is not None},
    )


def served_domains(files: RouterFiles, listed: str) -> frozenset[str]:
    """The custom domains a crt-list's text (a file's, or ``RuntimeAPI.crt_list``'s answer)
    serves with their own certificate: lines ``<certs/DOMAIN.pem> DOMAIN``."""
    words = (line.split() for line in listed.splitlines() if not line.startswith("#"))
    return frozenset(w[-1] for w in words if len(w) >= 2 and w[0] == str(files.cert_of(w[-1])))


async def write_https_maps(svc: Services, *, files: RouterFiles, listed: str | None) -> HttpsMaps:
    """The maps' files brought to the database, for an HAProxy about to read them with the
    crt-list ``listed`` (a start, a reload): ``router_config`` calls it. Call it holding the
    router's lock. A configuration HAProxy then refuses leaves the files ahead of the crt-list
    put back until the next apply: a running HAProxy is not touched by them."""
    maps = await https_maps(svc, files=files, listed=listed)
    await asyncio.to_thread(_write_maps, files, maps)
    return maps


async def apply_https_maps(svc: Services, *, files: RouterFiles) -> tuple[HttpsMaps, bool]:
    """The maps brought to the database, in the files and in a running HAProxy whose
    configuration reads them (each map replaced in one atomic step: no reload); and whether
    an HAProxy answered.

    A running HAProxy is asked which certificates it serves: a domain's first certificate
    waits for a reload, and a configuration refused leaves it out, whatever the files say.
    One that does not run reads the crt-list's file when it starts, with the maps'.
    """
    async with locked(files):
        config = await asyncio.to_thread(_read, files.config)
        serving = str(files.redirects) in config  # the configuration HAProxy runs now
        alive = await MasterCLI(files.master).alive()
        api = RuntimeAPI(files.api)
        listed: str | None = None
        if serving and alive:
            listed = await api.crt_list(files.crt_list)
        elif serving:
            listed = await asyncio.to_thread(_read, files.crt_list)
        maps = await write_https_maps(svc, files=files, listed=listed)
        if alive and serving:
            await api.replace_map(files.redirects, maps.redirects)
            await api.replace_map(files.hsts, maps.hsts)
        return maps, alive


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


async def _route_holders(
    svc: Services, session: AsyncSession, request: Request, domain: str, *, holder: str | None
) -> None:
    """A split's or a failover's other environment: the redirect and HSTS change what its
    visitors of ``domain`` meet too, so ``request`` must move its traffic as well."""
    route = await session.get(Route, domain)
    for env_id in (route.primary_id, route.secondary_id) if route else ():
        other = await session.get(EnvironmentRecord, env_id)
        if other is not None and other.name != holder:
            await access.check_recorded(
                svc, session, request, name=other.name, action=Action.MOVE_TRAFFIC
            )


async def _check_max_age(
    svc: Services,
    session: AsyncSession,
    request: Request,
    env: str | None,
    *,
    age: int,
    named: int | None,
) -> None:
    """A max-age over a year is for admins: a browser keeps it, whatever is set after."""
    if age <= MAX_AGE_UNLESS_ADMIN or request.user in svc.settings.admins:
        return
    whose = "" if named is not None else " (CLONEBOT_HSTS_MAX_AGE)"
    reason = (
        f"an HSTS max-age of {age}{whose} is over a year: only an admin may set one; "
        f"give {MAX_AGE_UNLESS_ADMIN} or less (hsts={MAX_AGE_UNLESS_ADMIN})"
    )
    await _refuse(session, request, "domain https", env, reason=reason)


async def _refuse(
    session: AsyncSession, request: Request, action: str, env: str | None, *, reason: str
) -> NoReturn:
    """Forbidden, and audited as refused."""
    repo.record_audit(
        session, actor=request.user, action=action, environment=env,
        channel=request.channel, allowed=False, reason=reason,
    )  # fmt: skip
    await session.commit()
    raise Forbidden(reason)


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

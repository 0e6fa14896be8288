"""``GET /healthz``: whether clonebot can work, for a load balancer or a person; no internals.
``GET /metrics``: Prometheus's text (``services.metrics``).

The answer is ``{"ok": true|false, "checks": {"docker": "ok"|"failing", "database": …,
"slack": "ok"|"failing"|"off"}}``, 200 when ok and 503 when not. Why a check fails goes to the
log, as the error's type and its message with tokens and passwords taken out: the endpoint
answers anyone, and an exception's text may name hosts, users or paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from sqlalchemy import text

from services import metrics
from services.context import Services

log = logging.getLogger(__name__)
CHECK_S = 2.0  # each check's time limit: a check that hangs is failing
_SECRET = re.compile(r"xox[a-z]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+|(?<=://)[^/\s:@]+:[^/\s@]+(?=@)")


class Check(Protocol):
    async def __call__(self) -> None: ...  # returns when healthy, raises when not


def redact(message: str) -> str:
    """``message`` without Slack tokens or the passwords of URLs (``postgres://u:…@h``)."""
    return _SECRET.sub("(redacted)", message)


async def check_health(svc: Services, *, slack: Check | None) -> dict[str, Any]:
    """Every check, run at once; ``slack`` is None when Slack is off."""

    async def database() -> None:
        async with svc.sessions() as session:
            await session.execute(text("SELECT 1"))

    checks: dict[str, Callable[[], Awaitable[Any]]] = {
        "docker": svc.docker.ping,
        "database": database,
    }
    if slack is not None:
        checks["slack"] = slack
    states = await asyncio.gather(*(_run(name, check) for name, check in checks.items()))
    results = dict(zip(checks, states, strict=True))
    results.setdefault("slack", "off")
    return {"ok": all(state != "failing" for state in results.values()), "checks": results}


async def _run(name: str, check: Callable[[], Awaitable[Any]]) -> str:
    try:
        async with asyncio.timeout(CHECK_S):
            await check()
    except Exception as exc:  # any failure is the answer; why goes to the log only
        log.warning("health check %s failing: %s: %s", name, type(exc).__name__, redact(str(exc)))
        return "failing"
    return "ok"


def healthz(
    svc: Services, *, slack: Check | None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def answer(request: web.Request) -> web.Response:
        health = await check_health(svc, slack=slack)
        return web.json_response(health, status=200 if health["ok"] else 503)

    return answer


def metrics_handler(svc: Services) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def answer(request: web.Request) -> web.Response:
        body = await metrics.scrape(svc)
        # the text format every Prometheus reads (prometheus_client's own default answer)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    return answer


@contextlib.asynccontextmanager
async def serving_health(svc: Services) -> AsyncIterator[None]:
    """``/healthz`` and ``/metrics`` on PORT while Slack is off (with Slack on, the Slack app
    serves them)."""
    settings = svc.settings
    app = web.Application()
    app.router.add_get("/healthz", healthz(svc, slack=None))
    app.router.add_get("/metrics", metrics_handler(svc))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, settings.http_host, settings.port).start()
        except OSError as exc:  # the rest of clonebot works without it
            log.warning(
                "/healthz and /metrics not served on port %s: %s", settings.port, exc.strerror
            )
        yield
    finally:
        await runner.cleanup()

"""``GET /playground/links``: where the page's links open each environment's site (through
clonebot's router, on its port, as a browser on this machine reaches it)."""

from __future__ import annotations

from typing import Any

from bot.playground.people import ADMIN
from services import catalog
from services.context import Services
from services.traffic.routing import site_url

_ANY_HOST = ("0.0.0.0", "*", "::", "[::]", "")


def router_url(router_bind: str) -> str:
    """The router's address for a browser here: an any-host bind is reached on 127.0.0.1."""
    host, _, port = router_bind.rpartition(":")
    return f"http://{'127.0.0.1' if host in _ANY_HOST else host}:{port}"


async def environment_links(svc: Services) -> dict[str, Any]:
    """The router, and each environment with a web layer: its site and its custom domains."""
    settings = svc.settings
    views = await catalog.visible_environments(svc, user=ADMIN)  # the admin sees them all
    return {
        "router": router_url(settings.router_bind),
        "environments": [
            {
                "name": v.name,
                "url": site_url(f"{v.name}.{settings.base_domain}", port=settings.router_port),
                "domains": list(v.domains),
            }
            for v in sorted(views, key=lambda v: v.name)
            if v.env.web_layer is not None
        ],
    }

"""Stopping a clone and starting it again: asked for, asleep when idle, or expired.

A stopped clone keeps its containers, volumes and networks; started again it is as it was.
"""

from __future__ import annotations

import html
import time
from enum import StrEnum

from services.cloning import CloneResult
from services.docker import DockerClient, gather_all
from services.environments import Environment, Node, get_environment
from services.errors import NotAClone
from services.progress import EventSink, ignore_events, step
from services.traffic.haproxy import Page

_RUNNING = ("running", "paused", "restarting")


class Stopped(StrEnum):
    """Why clonebot stopped an environment (its record keeps it while it is stopped)."""

    ASKED = "asked"  # /env sleep: a request to its domain does not wake it
    IDLE = "idle"  # no request for CLONEBOT_SLEEP_AFTER: a request wakes it
    EXPIRED = "expired"  # its expiry came: deleted CLONEBOT_EXPIRY_GRACE later


# a visitor's browser asks again this often while a clone asleep for idleness starts
WAKING_REFRESH_S = 5
_WAKING = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta http-equiv="refresh" content="{refresh}"><title>Waking up {name}</title></head>'
    "<body><h1>{name} is waking up</h1><p>It was asleep after a while without visits. "
    "This page reloads itself in a few seconds.</p></body></html>"
)
_STOPPED = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{name} is stopped'
    "</title></head><body><h1>{name} is stopped</h1><p>{why}</p></body></html>"
)
_WHY = {
    Stopped.ASKED: "Its owner put it to sleep; they can wake it again.",
    Stopped.EXPIRED: "Its time ran out; its owner can extend it to bring it back.",
}


def stopped_page(name: str, why: Stopped) -> Page:
    """What a request to a stopped clone's domains gets: asleep for idleness, a page that
    reloads itself while clonebot starts it (the request wakes it); else why it is stopped."""
    shown = html.escape(name, quote=True)
    if why is Stopped.IDLE:
        text = _WAKING.format(name=shown, refresh=WAKING_REFRESH_S)
        return Page(text, retry_after_s=WAKING_REFRESH_S)
    return Page(_STOPPED.format(name=shown, why=_WHY[why]))


async def stop_environment(
    docker: DockerClient, *, name: str, job: str, emit: EventSink = ignore_events
) -> CloneResult:
    """Stop a clone's nodes: the layers using the data stores first, then the stores."""
    started = time.monotonic()
    env = await _clone(docker, name, verb="stop")
    for stateful in (False, True):
        nodes = [n for n in _nodes(env, stateful=stateful) if n.state in _RUNNING]
        await gather_all(*(_stop(docker, n, emit) for n in nodes))
    return _result(env, job=job, started=False, since=started)


async def start_environment(
    docker: DockerClient, *, name: str, job: str, emit: EventSink = ignore_events
) -> CloneResult:
    """Start a stopped clone's nodes: the data stores first, so the layers using them find
    them up."""
    started = time.monotonic()
    env = await _clone(docker, name, verb="start")
    for stateful in (True, False):
        nodes = [n for n in _nodes(env, stateful=stateful) if n.state not in _RUNNING]
        await gather_all(*(_start(docker, n, emit) for n in nodes))
    return _result(env, job=job, started=True, since=started)


async def _clone(docker: DockerClient, name: str, *, verb: str) -> Environment:
    env = await get_environment(docker, name)
    if env.cloned_from is None:  # a source is never stopped by clonebot
        raise NotAClone(name, verb)
    return env


def _nodes(env: Environment, *, stateful: bool) -> list[Node]:
    return [
        n for layer in env.layers if (layer.scaling == "stateful") is stateful for n in layer.nodes
    ]


async def _stop(docker: DockerClient, node: Node, emit: EventSink) -> None:
    async with step(emit, "stop", node.name):
        await docker.stop_container(node.id)


async def _start(docker: DockerClient, node: Node, emit: EventSink) -> None:
    async with step(emit, "start", node.name):
        await docker.start_container(node.id)


def _result(env: Environment, *, job: str, started: bool, since: float) -> CloneResult:
    return CloneResult(
        job=job,
        environment=env.name,
        source=env.cloned_from or "",
        state="succeeded",
        started=started,
        nodes=[n.name for n in env.nodes],
        elapsed_ms=int((time.monotonic() - since) * 1000),
    )

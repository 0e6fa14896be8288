"""Stopping a clone and starting it again: asked for, asleep when idle, or expired.

A stopped clone keeps its containers, volumes and networks; started again it is as it was.
"""

from __future__ import annotations

import time
from enum import StrEnum

from services.cloning import CloneResult
from services.docker import DockerClient, gather_all
from services.environments import Environment, Node, get_environment
from services.errors import NotAClone
from services.progress import EventSink, ignore_events, step

_RUNNING = ("running", "paused", "restarting")


class Stopped(StrEnum):
    """Why clonebot stopped an environment (its record keeps it while it is stopped)."""

    ASKED = "asked"  # /env sleep: a request to its domain does not wake it
    IDLE = "idle"  # no request for CLONEBOT_SLEEP_AFTER: a request wakes it
    EXPIRED = "expired"  # its expiry came: deleted CLONEBOT_EXPIRY_GRACE later


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

"""What every benchmark needs: commands, source environments, timing, clean-up and output."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from services.cloning import CloneResult
from services.docker import DockerClient
from services.environments import NUMBER, ONEOFF, PROJECT, SERVICE
from services.errors import ClonebotError, EnvironmentNotFound
from services.lifecycle import clone_environment, delete_environment
from services.progress import EventSink, ignore_events
from services.settings import Settings

IMAGE = os.environ.get("CLONEBOT_TEST_IMAGE", "clonebot-test/busybox:latest")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MIB = 1024 * 1024
MB = 1000 * 1000
# this engine's default bridge may be unusable; helpers need no network anyway (as clonebot's)
NO_NETWORK = ("--network", "none")

log = logging.getLogger("bench")
A = TypeVar("A")
B = TypeVar("B")


class CommandFailed(RuntimeError):
    """A command of a benchmark (``docker ...``, a baseline script) exited with an error."""


def clonebot_settings() -> Settings:
    """clonebot's settings from the environment; its helper image is built from /bin/busybox."""
    os.environ.setdefault("CLONEBOT_BUSYBOX", "/bin/busybox")
    return Settings()


def repetitions(default: int) -> int:
    """How many runs: ``BENCH_RUNS`` when set (1 for a quick smoke run), else ``default``."""
    value = os.environ.get("BENCH_RUNS", "")
    return max(1, int(value)) if value else default


def new_name(prefix: str) -> str:
    """A random environment name, so that we never collide with other users of the engine."""
    return f"{prefix}{secrets.token_hex(3)}"


async def cli(*args: str) -> str:
    """Run a command from the repository root; its stdout, or ``CommandFailed`` with stderr."""
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        what = " ".join(args)[:120]
        raise CommandFailed(f"{what} exited {proc.returncode}: {err.decode().strip()[-600:]}")
    return out.decode()


async def timed_script(script: str) -> float:
    """Wall time (s) of a bash script, as a person would run it (stops at the first error)."""
    started = time.perf_counter()
    await cli("bash", "-euo", "pipefail", "-c", script)
    return time.perf_counter() - started


async def timed_clone(
    docker: DockerClient,
    settings: Settings,
    *,
    source: str,
    name: str,
    emit: EventSink = ignore_events,
    target: DockerClient | None = None,
) -> tuple[CloneResult, float]:
    """clonebot's ``clone_environment`` (planning included): its result and wall time (s)."""
    started = time.perf_counter()
    result = await clone_environment(
        docker, settings, source=source, name=name, emit=emit, target=target
    )
    return result, time.perf_counter() - started


async def in_turn(
    run: int, *, clonebot: Callable[[], Awaitable[A]], baseline: Callable[[], Awaitable[B]]
) -> tuple[A, B]:
    """Measure both sides in one run; who goes first alternates, so caches favour neither.

    Dirty pages are written out before each side, so neither pays for the other's writes.
    """
    if run % 2 == 0:
        first = await _settled(clonebot)
        return first, await _settled(baseline)
    second = await _settled(baseline)
    return await _settled(clonebot), second


async def _settled(measure: Callable[[], Awaitable[A]]) -> A:
    await asyncio.to_thread(os.sync)
    return await measure()


async def check_image() -> None:
    """Fail early, with the fix, when the local test image is missing (we never pull)."""
    try:
        await cli("docker", "image", "inspect", IMAGE)
    except CommandFailed as exc:
        raise CommandFailed(
            f"{IMAGE} is missing: run `bash scripts/build-test-images.sh` ({exc})"
        ) from exc


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("inf")


def medians(samples: Sequence[dict[str, float]]) -> dict[str, float]:
    """The median of every figure across runs (each run is one dict of figures)."""
    keys = samples[0].keys() if samples else []
    return {key: median([s[key] for s in samples]) for key in keys}


def print_table(title: str, rows: Sequence[tuple[str, object, str]]) -> None:
    """A short table: (figure, value, note) per line."""
    print(f"\n{title}")
    width = max((len(r[0]) for r in rows), default=0)
    for figure, value, note in rows:
        shown = f"{value:10.3f}" if isinstance(value, float) else f"{value!s:>10}"
        print(f"  {figure:<{width}}  {shown}  {note}")


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with the figures and where they were measured."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    meta = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "image": IMAGE,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "docker_host": os.environ.get("DOCKER_HOST", ""),
    }
    path.write_text(json.dumps({**meta, **data}, indent=2) + "\n")
    return path


async def best_effort(what: str, call: Awaitable[object]) -> None:
    """Clean-up step: log a failure and go on, so one failure does not leave the rest behind."""
    try:
        await call
    except (ClonebotError, CommandFailed) as exc:
        log.warning("clean-up: %s failed: %s", what, exc)


async def remove_environment(docker: DockerClient, name: str) -> None:
    """Remove an environment (source, clone or baseline) we made, and all labelled with it."""
    try:
        await delete_environment(docker, name=name, force=True)
    except EnvironmentNotFound:
        pass  # never created, or its containers are gone already: remove what is labelled
    except ClonebotError as exc:
        log.warning("clean-up: deleting %s failed: %s", name, exc.message)
    label = [f"{PROJECT}={name}"]
    for container in await docker.list_containers(labels=label):
        await best_effort(name, docker.remove_container(container["Id"]))
    for network in await docker.list_networks(labels=label):
        await best_effort(name, docker.remove_network(network["Id"]))
    for volume in await docker.list_volumes(labels=label):
        await best_effort(name, docker.remove_volume(volume["Name"]))
    for image in await docker.list_images(labels=label):
        await best_effort(name, docker.remove_image(image["Id"]))


def compose_labels(*, env: str, layer: str, number: int) -> list[str]:
    """``--label`` arguments that make a container a node of a Compose project."""
    labels = {PROJECT: env, SERVICE: layer, NUMBER: str(number), ONEOFF: "False"}
    return [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]

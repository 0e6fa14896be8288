"""Failover: how fast, and at what cost in failed requests, traffic moves to the backup.

Two environments, primary and backup, each with one busybox httpd web node whose page is the
environment's name. clonebot's own HAProxy (``EmbeddedHAProxy`` started from ``router_state``,
bound to 127.0.0.1) serves ``shop.bench`` through ``set_failover(primary, backup)``; as
``clonebot serve`` does, the routes are applied once a second. For each failure mode in turn,
while ``wrk`` loads ``shop.bench`` for 20 s over 8 connections:

* at 2 s the primary's node fails: ``stop`` (docker stop -t 0), ``pause`` (docker pause: it
  still accepts connections and never answers) or ``5xx`` (every answer a 500);
* at 8 s it recovers (docker start / unpause / its page back).

A probe sends ``GET /`` on a new connection every 50 ms, each on its own (a hung one does not
hold up the next). Seconds to the backup: from the call that makes the node fail (Docker's
own time included) until the first answer after which every answer was the backup's page;
seconds back to the primary likewise from the call that mends it. Failed requests: wrk's
answers other than 2xx and its socket errors (10 s timeout), over the whole load, plus the
probes that failed. Targets: on the backup within 5 s, 0 failed requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from bench.harness import (
    clonebot_settings,
    medians,
    new_name,
    print_table,
    remove_environment,
    repetitions,
    write_results,
)
from bench.routing import WRK, WRK_SCRIPT, _free_port, _wrk_figures
from bench.sources import create_network, run_node
from services.access import Request
from services.context import Services, open_services
from services.docker import DockerClient
from services.environments import HTTP_PORT, OWNER
from services.settings import Settings
from services.traffic.haproxy import EmbeddedHAProxy, RouterFiles, render_config
from services.traffic.router import apply_routes, router_state
from services.traffic.routing import add_domain, set_failover

NAME = "failover"
USER = "UBENCH1"
SHOP = "shop.bench"
WEB = "mkdir -p /www && echo {page} > /www/index.html && exec httpd -f -p 80 -h /www"
BREAK = (
    "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho \"Status: 500 Broken\"\\necho\\n' "
    "> /www/cgi-bin/index.cgi && chmod +x /www/cgi-bin/index.cgi && rm /www/index.html"
)
MEND = "echo {page} > /www/index.html && rm /www/cgi-bin/index.cgi"
MODES = ("stop", "pause", "5xx")
LOAD_S, FAIL_AT_S, RECOVER_AT_S = 20, 2.0, 8.0
THREADS, CONNECTIONS, WRK_TIMEOUT_S = 2, 8, 10
PROBE_EVERY_S, PROBE_TIMEOUT_S = 0.05, 10.0
APPLY_EVERY_S = 1.0  # serve's router keeper polls this often
MAX_TO_BACKUP_S = 5.0


async def main() -> dict[str, Any]:
    """Every mode, ``BENCH_RUNS`` times (3 by default): print the medians, write the JSON."""
    runs = repetitions(3)
    settings = clonebot_settings()
    samples: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    statuses: dict[str, list[dict[str, int]]] = {mode: [] for mode in MODES}
    for _ in range(runs):
        for mode in MODES:
            figures, non2xx = await _one_run(settings, mode)
            samples[mode].append(figures)
            statuses[mode].append(non2xx)
    return _report(samples, statuses)


@dataclass
class Bench:
    svc: Services
    files: RouterFiles
    bind: str
    primary: str
    backup: str
    script: Path

    @property
    def node(self) -> str:
        return f"{self.primary}_web_1"


async def _one_run(settings: Settings, mode: str) -> tuple[dict[str, float], dict[str, int]]:
    """Fresh environments, database and HAProxy, all removed afterwards: the run's figures,
    and wrk's answers other than 2xx by status."""
    primary, backup = new_name("bfp"), new_name("bfb")
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        work = Path(tmp)
        settings = settings.model_copy(
            update={
                "data_dir": work,
                "database_url": f"sqlite+aiosqlite:///{work / 'clonebot.db'}",
                "router_dir": work / "router",
            }
        )
        async with DockerClient(settings.docker_host) as docker:
            try:
                for env in (primary, backup):
                    await create_network(env=env)
                    labels = {HTTP_PORT: "80", OWNER: USER}
                    await run_node(
                        env=env, layer="web", number=1, command=WEB.format(page=env), labels=labels
                    )
                return await _scenario(settings, work, docker, mode, primary, backup)
            finally:
                with contextlib.suppress(Exception):
                    await docker.unpause_container(f"{primary}_web_1")
                for env in (primary, backup):
                    await remove_environment(docker, env)


async def _scenario(
    settings: Settings, work: Path, docker: DockerClient, mode: str, primary: str, backup: str
) -> tuple[dict[str, float], dict[str, int]]:
    files = RouterFiles(work / "router")
    bind = f"127.0.0.1:{_free_port()}"
    script = work / "count.lua"
    script.write_text(WRK_SCRIPT)
    async with open_services(settings) as svc:
        haproxy = EmbeddedHAProxy(files=files)
        state = await router_state(svc)
        await haproxy.start(
            config=render_config(files=files, bind=bind, backends=state.backends),
            hosts=state.hosts,
        )
        try:
            bench = Bench(svc, files, bind, primary, backup, script)
            me = Request(USER)
            await add_domain(svc, me, env=primary, domain=SHOP)
            await set_failover(svc, me, domain=SHOP, primary=primary, backup=backup)
            await apply_routes(svc, files=files, bind=bind)
            await _until_page(bench, primary)
            async with _keeper(bench), _wrk_load(bench) as wrk:
                probed = await _fail_and_recover(bench, docker, mode)
                load, non2xx = await _wrk_figures(wrk)
            return {
                **probed,
                "failed": load["failed"] + probed["probe_failed"],
                "wrk_failed": load["failed"],
                "wrk_non2xx": load["non2xx"],
                "wrk_socket_errors": load["failed"] - load["non2xx"],
                "requests": load["requests"],
                "rps": load["rps"],
                "load_max_ms": load["load_max_ms"],
            }, non2xx
        finally:
            await haproxy.stop()


@contextlib.asynccontextmanager
async def _keeper(bench: Bench) -> AsyncIterator[None]:
    """The routes applied once a second, as ``clonebot serve``'s router keeper does."""

    async def keep() -> None:
        while True:
            await asyncio.sleep(APPLY_EVERY_S)
            await apply_routes(bench.svc, files=bench.files, bind=bench.bind)

    task = asyncio.create_task(keep())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def _wrk_load(bench: Bench) -> AsyncIterator[asyncio.subprocess.Process]:
    args = [f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{LOAD_S}s", f"--timeout={WRK_TIMEOUT_S}s"]
    args += ["--latency", "-s", str(bench.script), "-H", f"Host: {SHOP}"]
    proc = await asyncio.create_subprocess_exec(
        WRK, *args, f"http://{bench.bind}/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


Step = Callable[[], Awaitable[Any]]


def _failure(docker: DockerClient, bench: Bench, mode: str) -> tuple[Step, Step]:
    """The failure of ``mode`` and its recovery."""
    node = bench.node
    if mode == "stop":
        return lambda: docker.stop_container(node, timeout_s=0), lambda: docker.start_container(
            node
        )
    if mode == "pause":
        return lambda: docker.pause_container(node), lambda: docker.unpause_container(node)
    mend = MEND.format(page=bench.primary)
    return lambda: _exec(docker, node, BREAK), lambda: _exec(docker, node, mend)


async def _exec(docker: DockerClient, node: str, script: str) -> None:
    async with docker.exec_session(node, ["sh", "-c", script]) as session:
        lines = [line async for line in session.lines()]
        if await session.exit_code() != 0:
            raise RuntimeError(f"{script!r} failed in {node}: {lines}")


async def _fail_and_recover(bench: Bench, docker: DockerClient, mode: str) -> dict[str, float]:
    """Seconds until on the backup and back, the longest wait of a probe, probes failed."""
    fail, recover = _failure(docker, bench, mode)
    started = time.monotonic()
    await asyncio.sleep(FAIL_AT_S)
    probes = asyncio.create_task(_probes(bench, until=started + RECOVER_AT_S))
    await fail()
    failed_at = time.monotonic()  # when the failure is complete (docker stop has returned)
    down = await probes
    await asyncio.sleep(max(0.0, started + RECOVER_AT_S - time.monotonic()))
    probes = asyncio.create_task(_probes(bench, until=started + LOAD_S - 0.5))
    await recover()
    recovered_at = time.monotonic()
    up = await probes
    return {
        "to_backup_s": _settled_on(down, bench.backup, since=failed_at),
        "back_to_primary_s": _settled_on(up, bench.primary, since=recovered_at),
        "probe_max_wait_s": max(p.answered - p.sent for p in down + up),
        "probe_failed": float(sum(1 for p in down + up if p.page is None)),
    }


class Probe(NamedTuple):
    sent: float
    answered: float
    page: str | None  # None: it failed (an error, or a status other than 200)


async def _probes(bench: Bench, *, until: float) -> list[Probe]:
    """A probe every 50 ms until ``until``, each on a new connection of its own."""
    tasks = []
    while time.monotonic() < until:
        tasks.append(asyncio.create_task(_probe(bench)))
        await asyncio.sleep(PROBE_EVERY_S)
    return list(await asyncio.gather(*tasks))


async def _probe(bench: Bench) -> Probe:
    sent = time.monotonic()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            status, page = await _get(bench)
    except (OSError, TimeoutError):
        return Probe(sent, time.monotonic(), None)
    return Probe(sent, time.monotonic(), page if status == 200 else None)


async def _get(bench: Bench) -> tuple[int, str]:
    host, _, port = bench.bind.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET / HTTP/1.0\r\nHost: {SHOP}\r\n\r\n".encode())
        answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    fields = head.split(maxsplit=2)
    status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    return status, body.decode(errors="replace").strip()


def _settled_on(probes: list[Probe], page: str, *, since: float) -> float:
    """Seconds from ``since`` until the answers are ``page``: the first answer after which
    every answer (in the order they came) was ``page``; infinite when the last was not."""
    settled = float("inf")
    for probe in sorted(probes, key=lambda p: p.answered, reverse=True):
        if probe.page != page or probe.answered < since:
            break
        settled = probe.answered - since
    return settled


async def _until_page(bench: Bench, page: str, *, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if await _get(bench) == (200, page):
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{SHOP} did not serve {page} within {within_s} s")


def _report(
    samples: dict[str, list[dict[str, float]]], statuses: dict[str, list[dict[str, int]]]
) -> dict[str, Any]:
    mids = {mode: medians(runs) for mode, runs in samples.items()}
    runs = len(next(iter(samples.values())))
    load = (
        f"wrk -t{THREADS} -c{CONNECTIONS} -d{LOAD_S}s --timeout={WRK_TIMEOUT_S}s -H 'Host: {SHOP}'"
    )
    result: dict[str, Any] = {
        "runs": runs,
        "load": load,
        "fail_at_s": FAIL_AT_S,
        "recover_at_s": RECOVER_AT_S,
        "targets": {"to_backup_s_max": MAX_TO_BACKUP_S, "failed_max": 0},
        "medians": mids,
        "samples": samples,
        "wrk_non2xx_by_status": statuses,
        "meets_target": all(
            m["to_backup_s"] <= MAX_TO_BACKUP_S and m["failed"] == 0 for m in mids.values()
        ),
    }
    rows: list[tuple[str, object, str]] = []
    for mode, mid in mids.items():
        rows += [
            (f"{mode}: s until on the backup", mid["to_backup_s"], f"target <= {MAX_TO_BACKUP_S}"),
            (f"{mode}: s until back on the primary", mid["back_to_primary_s"], ""),
            (f"{mode}: failed requests (wrk + probes)", int(mid["failed"]), "target 0"),
            (f"{mode}:   wrk non-2xx", int(mid["wrk_non2xx"]), ""),
            (f"{mode}:   wrk socket errors", int(mid["wrk_socket_errors"]), ""),
            (f"{mode}:   probes failed", int(mid["probe_failed"]), ""),
            (f"{mode}: longest wait of a probe (s)", mid["probe_max_wait_s"], ""),
            (f"{mode}: requests (wrk)", int(mid["requests"]), ""),
            (f"{mode}: slowest wrk answer (ms)", mid["load_max_ms"], ""),
        ]
    print_table(
        f"failover: {LOAD_S} s of {load}, the primary failing at {FAIL_AT_S:g} s and "
        f"recovering at {RECOVER_AT_S:g} s (medians of {runs} runs)",
        rows,
    )
    write_results(NAME, result)
    return result

"""Routing: swaps, weight changes and a seamless reload under load, through a real HAProxy.

Two environments, blue and green, each with one busybox httpd web node whose page is the
environment's name. clonebot's own HAProxy (``EmbeddedHAProxy`` started from ``router_state``,
bound to 127.0.0.1) serves ``shop.bench`` from blue and ``beta.bench`` from green. While
``wrk`` (a second process) loads ``shop.bench`` for 30 s, clonebot:

* in the first half, swaps blue and green 50 times (``swap_routes``, as the front doors do:
  the database, then HAProxy's map), each timed from the call until a request on a fresh
  connection gets the other page;
* at half time, reloads HAProxy once, seamlessly (``EmbeddedHAProxy.reload``);
* in the second half, changes the weights of a split of ``shop.bench`` 50 times
  (``set_split``, then ``apply_routes``).

Each run does this twice, with fresh environments, database and HAProxy: under wrk's 8
connections (enough for the rate the target asks, without queueing in HAProxy), then 64.
Swaps go first because a route (what ``set_split`` creates) wins over the binding that a swap
exchanges: after the first split, a swap no longer moves ``shop.bench``. Every response of the
load is counted by a wrk Lua script: only 2xx is a success; a failure is a non-2xx answer or a
socket error of wrk (connect, read, write, or no answer within 10 s). Afterwards, with one
connection for 5 s each, HAProxy's added latency: through HAProxy vs. straight to the web
node's bridge address. Targets, under each load: >= 2,000 requests/s, 0 failures, swap p99
under 25 ms as the median of the runs and under 50 ms in every run.

The bench's process plays `clonebot serve`: it runs at ``CLONEBOT_NICE`` (-10 unless set, when
it may), and its HAProxy and wrk at the niceness the bench was started with, as serve's HAProxy
does (``services.priority``). The niceness it had is in the results.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg

from bench.harness import (
    CommandFailed,
    clonebot_settings,
    median,
    medians,
    new_name,
    print_table,
    remove_environment,
    repetitions,
    write_results,
)
from bench.sources import create_network, run_node
from services.access import Request
from services.context import Services, open_services
from services.docker import DockerClient
from services.environments import HTTP_PORT, OWNER
from services.priority import as_started, started_niceness, take_priority
from services.settings import Settings
from services.traffic.haproxy import EmbeddedHAProxy, RouterFiles, render_config, structure_of
from services.traffic.router import apply_routes, env_backend, router_state, swap_routes
from services.traffic.routing import add_domain, set_split

NAME = "routing"
USER = "UBENCH1"  # owns both environments (their clonebot.owner label): may move traffic
SHOP, BETA = "shop.bench", "beta.bench"
# The web nodes answer their page from an HAProxy of their own: busybox httpd listens with a
# backlog of 9, so 64 connections overflowed it and a request waited for a SYN retry (1 s),
# which measured the node, not the swap.
NODE_IMAGE = "clonebot-test/haproxy:latest"
WEB = (
    "printf 'defaults\\n mode http\\n timeout client 30s\\n timeout connect 3s\\n"
    " timeout server 30s\\nfrontend page\\n bind :80\\n"
    " http-request return status 200 content-type text/plain string {page}\\n'"
    " > /tmp/node.cfg && exec haproxy -f /tmp/node.cfg"
)
WRK = "/usr/bin/wrk"
LOAD_S, THREADS = 30, 2
# wrk's connections: 8 carry the rate asked without queueing in HAProxy; 64 load it harder
LOADS = (8, 64)
LATENCY_S = 5  # each side of the added-latency comparison, one connection
SWAPS = WEIGHT_CHANGES = 50
SPACING_S = (LOAD_S / 2 - 1) / SWAPS  # swaps in the first half, weight changes in the second
SHARES = (90, 70, 50, 30, 10)  # blue's share of shop.bench, in turn
PROBE_TIMEOUT_S = 5
# wrk counts a request in flight longer than this as a timeout error. Its default, 2 s, also
# counts the busybox node's own slow tail (seen with no change made, and straight at the node):
# a slow answer is still an answer, counted by its status.
WRK_TIMEOUT_S = 10
# swap p99: the median of the runs under this, and every run under the ceiling
MIN_RPS, SWAP_P99_MS, MAX_SWAP_P99_MS = 2000, 25, 50

# Counts every response that is not 2xx, by status (wrk's own "Non-2xx or 3xx" line lets 3xx
# through), and prints one JSON line with them, the socket errors and the latency (µs).
WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) responses = 0; statuses = {} end
function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then
    statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
  end
end
function done(summary, latency, requests)
  local seen, bad, parts = 0, {}, {}
  for _, thread in ipairs(threads) do
    seen = seen + thread:get("responses")
    for status, n in pairs(thread:get("statuses")) do bad[status] = (bad[status] or 0) + n end
  end
  for status, n in pairs(bad) do table.insert(parts, string.format('"%s": %d', status, n)) end
  local e = summary.errors
  io.write(string.format(
    'CLONEBOT {"requests": %d, "responses": %d, "non2xx": {%s}, "connect": %d, "read": %d, '
    .. '"write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, seen, table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


async def main() -> dict[str, Any]:
    """Run the scenario under each load (once by default: each lasts 30 s), print a table for
    each, write their JSON."""
    runs = repetitions(1)
    settings = clonebot_settings()
    # this process plays `clonebot serve`, which runs at CLONEBOT_NICE (where it may)
    take_priority(settings.nice)
    done: dict[int, list[tuple[dict[str, float], dict[str, int]]]] = {c: [] for c in LOADS}
    for _ in range(runs):  # the loads in turn in each run: both see the same machine
        for connections in LOADS:
            done[connections].append(await _one_run(settings, connections=connections))
    reports = {
        f"c{c}": _report([f for f, _ in found], [bad for _, bad in found], connections=c)
        for c, found in done.items()
    }
    result = {
        "loads": reports,
        "meets_target": all(r["meets_target"] for r in reports.values()),
        "niceness": {"clonebot": os.getpriority(os.PRIO_PROCESS, 0), "load": started_niceness()},
    }
    write_results(NAME, result)
    return result


@dataclass
class Bench:
    """One run's services, its HAProxy and its two environments."""

    svc: Services
    haproxy: EmbeddedHAProxy
    bind: str
    blue: str
    green: str
    script: Path
    on_shop: str = ""  # the environment shop.bench is bound to
    non2xx: Counter[str] = field(default_factory=Counter)  # "load 503", "probe 404"...

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])

    async def apply(self) -> bool:
        """``apply_routes``; True when it changed the structure, so reloaded HAProxy."""
        before = structure_of(self.haproxy.files.config.read_text())
        if not await apply_routes(self.svc, files=self.haproxy.files, bind=self.bind):
            raise RuntimeError("apply_routes found no HAProxy running")
        return structure_of(self.haproxy.files.config.read_text()) != before


class Swap(NamedTuple):
    """One swap, in ms from the call: until a probe got the other page, and until
    ``swap_routes`` returned (the database written, the new map committed)."""

    seen_ms: float
    applied_ms: float
    reloaded: bool


async def _one_run(
    settings: Settings, *, connections: int
) -> tuple[dict[str, float], dict[str, int]]:
    """Fresh environments, database and HAProxy, all removed afterwards: the run's figures,
    and its answers other than 2xx by who got them and status."""
    blue, green = new_name("brb"), new_name("brg")
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        work = Path(tmp)
        async with _database(work) as url, DockerClient(settings.docker_host) as docker:
            settings = settings.model_copy(
                update={"data_dir": work, "database_url": url, "router_dir": work / "router"}
            )
            try:
                for env in (blue, green):
                    await create_network(env=env)
                    labels = {HTTP_PORT: "80", OWNER: USER}
                    await run_node(
                        env=env,
                        layer="web",
                        number=1,
                        command=WEB.format(page=env),
                        labels=labels,
                        image=NODE_IMAGE,
                    )
                return await _scenario(
                    settings, work, blue=blue, green=green, connections=connections
                )
            finally:
                for env in (blue, green):
                    await remove_environment(docker, env)


@asynccontextmanager
async def _database(work: Path) -> AsyncIterator[str]:
    """A fresh database: a SQLite file in ``work``, or with ``BENCH_POSTGRES_URL`` (an asyncpg
    URL of a server, as deploy/compose.yaml runs clonebot) a new database there, dropped after."""
    server = os.environ.get("BENCH_POSTGRES_URL")
    if not server:
        yield f"sqlite+aiosqlite:///{work / 'clonebot.db'}"
        return
    name = f"bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server.replace("postgresql+asyncpg", "postgresql"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _database_name() -> str:
    return "PostgreSQL" if os.environ.get("BENCH_POSTGRES_URL") else "SQLite"


async def _scenario(
    settings: Settings, work: Path, *, blue: str, green: str, connections: int
) -> tuple[dict[str, float], dict[str, int]]:
    files = RouterFiles(work / "router")
    bind = f"127.0.0.1:{_free_port()}"
    script = work / "count.lua"
    script.write_text(WRK_SCRIPT)
    async with open_services(settings) as svc:
        haproxy = EmbeddedHAProxy(files=files)
        state = await router_state(svc)
        config = render_config(files=files, bind=bind, backends=state.backends)
        await haproxy.start(config=config, hosts=state.hosts)
        try:
            bench = Bench(svc, haproxy, bind, blue, green, script, on_shop=blue)
            me = Request(USER)
            await add_domain(svc, me, env=blue, domain=SHOP)
            await add_domain(svc, me, env=green, domain=BETA)
            await bench.apply()
            await _wait_for_page(bench, SHOP, blue, started=time.perf_counter())
            async with _wrk(bench, SHOP, threads=THREADS, connections=connections, s=LOAD_S) as w:
                changes = await _changes(bench)
                load, statuses = await _wrk_figures(w)
            bench.non2xx.update({f"load {status}": n for status, n in statuses.items()})
            figures = {**load, **changes, **await _added_latency(bench)}
            return figures, dict(bench.non2xx)
        finally:
            await haproxy.stop()


async def _changes(bench: Bench) -> dict[str, float]:
    """The swaps, the reload and the weight changes, at fixed times during the load."""
    started = time.perf_counter()
    swaps: list[Swap] = []
    for i in range(SWAPS):
        await _at(started, 0.5 + i * SPACING_S)
        swaps.append(await _swap(bench))
    await _at(started, LOAD_S / 2)
    before = time.perf_counter()
    await bench.haproxy.reload()
    reload_ms = (time.perf_counter() - before) * 1000
    weights: list[tuple[float, bool]] = []
    for i in range(WEIGHT_CHANGES):
        await _at(started, LOAD_S / 2 + 0.5 + i * SPACING_S)
        weights.append(await _weight_change(bench, share=SHARES[i % len(SHARES)]))
    seen = [swap.seen_ms for swap in swaps]
    return {
        "swap_p50_ms": percentile(seen, 50),
        "swap_p99_ms": percentile(seen, 99),
        "swap_max_ms": max(seen),
        "swap_applied_p50_ms": median([swap.applied_ms for swap in swaps]),
        "swap_applied_p99_ms": percentile([swap.applied_ms for swap in swaps], 99),
        "swaps_reloading": float(sum(swap.reloaded for swap in swaps)),
        "probe_non2xx": float(sum(n for k, n in bench.non2xx.items() if k.startswith("probe"))),
        "reload_ms": reload_ms,
        "weight_call_p50_ms": median([call for call, _ in weights]),
        "weight_call_max_ms": max(call for call, _ in weights),
        "weight_changes_reloading": float(sum(reloaded for _, reloaded in weights)),
        "last_weights_in_effect": float(await _weights_in_effect(bench)),
    }


async def _swap(bench: Bench) -> Swap:
    new = bench.green if bench.on_shop == bench.blue else bench.blue
    started = time.perf_counter()
    before = structure_of(bench.haproxy.files.config.read_text())
    if not await swap_routes(bench.svc, Request(USER), first=bench.blue, second=bench.green):
        raise RuntimeError("swap_routes found no HAProxy running")
    applied_ms = (time.perf_counter() - started) * 1000
    reloaded = structure_of(bench.haproxy.files.config.read_text()) != before
    bench.on_shop = new
    seen_ms = await _wait_for_page(bench, SHOP, new, started=started)
    return Swap(seen_ms, applied_ms, reloaded)


async def _weight_change(bench: Bench, *, share: int) -> tuple[float, bool]:
    """One new split of shop.bench: (ms until apply_routes returned, whether it reloaded)."""
    started = time.perf_counter()
    weights = {bench.blue: share, bench.green: 100 - share}
    await set_split(bench.svc, Request(USER), domain=SHOP, weights=weights, sticky=False)
    reloaded = await bench.apply()
    return (time.perf_counter() - started) * 1000, reloaded


async def _weights_in_effect(bench: Bench, *, within_s: float = 3) -> bool:
    """Whether HAProxy comes to serve shop.bench with the last weights (a reload requested
    while the previous one is not finished may be lost)."""
    state = await router_state(bench.svc)
    backend = next(b for b in state.backends if b.name == state.hosts[SHOP])
    deadline = time.monotonic() + within_s
    while True:
        served = [
            (await bench.haproxy.api.command(f"get weight {backend.name}/{server.name}")).split()
            for server in backend.servers
        ]
        wanted = [[str(server.weight)] for server in backend.servers]
        if [answer[:1] for answer in served] == wanted:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)


async def _wait_for_page(bench: Bench, host: str, page: str, *, started: float) -> float:
    """Poll, 1 ms apart, until ``host`` serves ``page``: the ms since ``started``."""
    status, body = 0, ""
    while time.perf_counter() - started < PROBE_TIMEOUT_S:
        status, body = await _get(bench.port, host)
        if status != 200:
            bench.non2xx[f"probe {status}"] += 1
        elif body == page:
            return (time.perf_counter() - started) * 1000
        await asyncio.sleep(0.001)
    last = f"{status} {body[:80]!r}"
    raise RuntimeError(f"{host} did not serve {page} within {PROBE_TIMEOUT_S} s (last: {last})")


async def _get(port: int, host: str) -> tuple[int, str]:
    """``GET /`` in HTTP/1.0 on a new connection to 127.0.0.1: status and page."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), PROBE_TIMEOUT_S)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    fields = head.split(maxsplit=2)
    status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    return status, body.decode(errors="replace").strip()


async def _added_latency(bench: Bench) -> dict[str, float]:
    """One connection for 5 s through HAProxy (green's internal domain), then to green's node."""
    state = await router_state(bench.svc)
    backend = next(b for b in state.backends if b.name == env_backend(bench.green))
    node = backend.servers[0]
    internal = f"{bench.green}.{bench.svc.settings.base_domain}"
    async with _wrk(bench, internal, threads=1, connections=1, s=LATENCY_S) as w:
        proxied, statuses = await _wrk_figures(w)
    bench.non2xx.update({f"proxied {status}": n for status, n in statuses.items()})
    direct_url = f"http://{node.address}:{node.port}/"
    async with _wrk(bench, None, threads=1, connections=1, s=LATENCY_S, url=direct_url) as w:
        direct, statuses = await _wrk_figures(w)
    bench.non2xx.update({f"direct {status}": n for status, n in statuses.items()})
    return {
        "haproxy_p50_ms": proxied["load_p50_ms"],
        "haproxy_p99_ms": proxied["load_p99_ms"],
        "direct_p50_ms": direct["load_p50_ms"],
        "direct_p99_ms": direct["load_p99_ms"],
        "added_p50_ms": proxied["load_p50_ms"] - direct["load_p50_ms"],
        "added_p99_ms": proxied["load_p99_ms"] - direct["load_p99_ms"],
        "haproxy_requests": proxied["requests"],
        "direct_requests": direct["requests"],
        "latency_runs_failed": proxied["failed"] + direct["failed"],
    }


@asynccontextmanager
async def _wrk(
    bench: Bench,
    host: str | None,
    *,
    threads: int,
    connections: int,
    s: int,
    url: str | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """wrk running in the background (against HAProxy unless ``url``); killed if left early."""
    args = [f"-t{threads}", f"-c{connections}", f"-d{s}s", f"--timeout={WRK_TIMEOUT_S}s"]
    args += ["--latency", "-s", str(bench.script)]
    args += ["-H", f"Host: {host}"] if host else []
    proc = await asyncio.create_subprocess_exec(
        *as_started([WRK, *args, url or f"http://{bench.bind}/"]),  # the load is not clonebot
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _wrk_figures(
    proc: asyncio.subprocess.Process,
) -> tuple[dict[str, float], dict[str, int]]:
    """Wait for wrk: its requests/s, failures (non-2xx and socket errors) and latency; and its
    answers other than 2xx, by status."""
    out, err = await proc.communicate()
    text = out.decode()
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    line = next((ln for ln in text.splitlines() if ln.startswith("CLONEBOT ")), None)
    if proc.returncode != 0 or rate is None or line is None:
        raise CommandFailed(f"wrk exited {proc.returncode}: {(text + err.decode())[-600:]}")
    counts = json.loads(line.removeprefix("CLONEBOT "))
    errors = {kind: float(counts[kind]) for kind in ("connect", "read", "write", "timeout")}
    non2xx = float(sum(counts["non2xx"].values()))
    figures = {
        "rps": float(rate.group(1)),
        "requests": float(counts["requests"]),
        "non2xx": non2xx,
        **{f"socket_errors_{kind}": n for kind, n in errors.items()},
        "failed": non2xx + sum(errors.values()),
        "load_p50_ms": counts["p50_us"] / 1000,
        "load_p99_ms": counts["p99_us"] / 1000,
        "load_max_ms": counts["max_us"] / 1000,
    }
    return figures, counts["non2xx"]


async def _at(started: float, offset_s: float) -> None:
    await asyncio.sleep(max(0.0, started + offset_s - time.perf_counter()))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], pct: int) -> float:
    """The ``pct``-th percentile, interpolated between the nearest samples."""
    if len(values) < 2:
        return float(values[0]) if values else float("nan")
    return float(statistics.quantiles(values, n=100, method="inclusive")[pct - 1])


def _report(
    samples: list[dict[str, float]], non2xx: list[dict[str, int]], *, connections: int
) -> dict[str, Any]:
    mid = medians(samples)
    failed = mid["failed"] + mid["probe_non2xx"]
    worst_p99 = max(s["swap_p99_ms"] for s in samples)
    result: dict[str, Any] = {
        "runs": len(samples),
        "database": _database_name(),
        "load": f"wrk -t{THREADS} -c{connections} -d{LOAD_S}s --timeout={WRK_TIMEOUT_S}s "
        f"--latency -H 'Host: {SHOP}'",
        "swaps": SWAPS,
        "weight_changes": WEIGHT_CHANGES,
        "targets": {
            "rps_min": MIN_RPS,
            "failed_max": 0,
            "swap_p99_ms_median_max": SWAP_P99_MS,
            "swap_p99_ms_every_run_max": MAX_SWAP_P99_MS,
        },
        "medians": mid,
        "swap_p99_ms_by_run": [s["swap_p99_ms"] for s in samples],
        "samples": samples,
        "non2xx_by_status": non2xx,
    }
    result["meets_target"] = (
        mid["rps"] >= MIN_RPS and failed == 0 and mid["swap_p99_ms"] < SWAP_P99_MS
        and worst_p99 < MAX_SWAP_P99_MS
    )  # fmt: skip
    by_run = ", ".join(f"{s['swap_p99_ms']:.1f}" for s in samples)
    print_table(
        f"routing ({_database_name()}): {LOAD_S} s of wrk -t{THREADS} -c{connections} on "
        f"{SHOP}, {SWAPS} swaps, "
        f"{WEIGHT_CHANGES} weight changes, 1 reload (medians of {len(samples)} runs; "
        f"clonebot at niceness {os.getpriority(os.PRIO_PROCESS, 0)}, HAProxy and wrk at "
        f"{started_niceness()})",
        [
            ("requests/s (wrk)", mid["rps"], f"target >= {MIN_RPS}"),
            ("requests", int(mid["requests"]), ""),
            ("failed: non-2xx + socket errors", int(mid["failed"]), "target 0"),
            ("  of which non-2xx", int(mid["non2xx"]), ""),
            *(
                (f"  of which socket errors, {kind}", int(mid[f"socket_errors_{kind}"]), "")
                for kind in ("connect", "read", "write", "timeout")
            ),
            ("swap probes answered non-200", int(mid["probe_non2xx"]), "target 0"),
            ("load latency p50 (ms)", mid["load_p50_ms"], ""),
            ("load latency p99 (ms)", mid["load_p99_ms"], ""),
            ("swap, call -> new page p50 (ms)", mid["swap_p50_ms"], ""),
            ("swap, call -> new page p99 (ms)", mid["swap_p99_ms"], f"target < {SWAP_P99_MS}"),
            ("  the worst run's p99 (ms)", worst_p99, f"target < {MAX_SWAP_P99_MS}; {by_run}"),
            ("swap, call -> new page max (ms)", mid["swap_max_ms"], ""),
            ("swap, call -> swap_routes done p50 (ms)", mid["swap_applied_p50_ms"], ""),
            ("swap, call -> swap_routes done p99 (ms)", mid["swap_applied_p99_ms"], ""),
            ("swaps that reloaded HAProxy", int(mid["swaps_reloading"]), "target 0"),
            ("weight change, call -> applied p50 (ms)", mid["weight_call_p50_ms"], ""),
            ("weight changes that reloaded HAProxy", int(mid["weight_changes_reloading"]), ""),
            ("last weights in effect (1 = yes)", int(mid["last_weights_in_effect"]), ""),
            ("explicit seamless reload (ms)", mid["reload_ms"], ""),
            ("1 connection via HAProxy p50 (ms)", mid["haproxy_p50_ms"], ""),
            ("1 connection direct p50 (ms)", mid["direct_p50_ms"], ""),
            ("HAProxy's added latency p50 (ms)", mid["added_p50_ms"], ""),
            ("HAProxy's added latency p99 (ms)", mid["added_p99_ms"], ""),
            ("failed in those 1-connection runs", int(mid["latency_runs_failed"]), ""),
        ],
    )
    return result

"""Forms as environments grow: the /clone form and ``/env list`` at 10, 100 and the most.

"The most" is as many environments as the engine's address pools have room for, were each on a
network of its own as Compose puts it (a /16 pool of /24 networks: 256, less those in use). The
environments are cheap: three busybox ``sleep`` containers each (layers app, worker, db) with
Compose's labels, owned by the user who asks; all of them share one network of the benchmark's,
so the pools are not used up for the other users of the engine. They are created in parallel
level by level (10, then 90 more, ...) and all removed at the end.

clonebot runs as ``clonebot serve`` does (``python -m bot serve``, a child process, HTTP on
127.0.0.1, a fresh SQLite database), against the local Slack Web API emulator
(``tests/slack/emulator.py``); the requests are signed as Slack signs them.

* the clone form: a ``/clone`` without arguments, timed from its POST until the emulator has the
  ``views.open`` of its trigger (Slack's trigger lasts 3 s);
* ``/env list``: timed from its POST until its answer reaches ``response_url``;
* the baseline: what a person would run to see the same, ``docker ps -aq --filter label=...`` and
  ``docker inspect`` of every container it lists.

At each level one warm-up of each, then ``runs`` timed rounds of the three; medians per level,
and ratios to the 10-environment level and to the baseline. Targets, at the most: the form opens
in under 1.5 s (half the trigger's life), and the form and the list take at most 1.5 times what
the baseline takes (clonebot reads what ``docker inspect`` reads: it may add, not multiply).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import (
    IMAGE,
    ROOT,
    CommandFailed,
    clonebot_settings,
    median,
    new_name,
    print_table,
    ratio,
    repetitions,
    timed_script,
    write_results,
)
from services.docker import DockerClient
from services.environments import NUMBER, ONEOFF, OWNER, PROJECT, SERVICE
from services.errors import ClonebotError
from tests.slack.emulator import SlackEmulator
from tests.slack.signing import SlackSender, command_request, slash_command

NAME = "forms"
LEVELS = (10, 100)  # and the most the address pools allow
LAYERS = ("app", "worker", "db")
USER = "UBENCH1"
BOT_TOKEN = "xoxb-bench"
PARALLEL = 8  # containers created (or removed) at once
ENVS_PER_NETWORK = 80  # 240 containers: a /24 network has 253 addresses
START_TIMEOUT_S, ANSWER_TIMEOUT_S = 60, 30
MAX_FORM_S, MAX_VS_DOCKER = 1.5, 1.5
# Docker's own pools when an engine sets none (libnetwork ipamutils)
DOCKER_POOLS = [(f"172.{n}.0.0/16", 16) for n in range(17, 32)] + [("192.168.0.0/16", 20)]
BASELINE = f"docker ps -aq --filter label={PROJECT} | xargs -r docker inspect >/dev/null"
LISTED = re.compile(r"Environments you may see\* \((\d+)\)")

Timed = Callable[[], Awaitable[float]]


async def main() -> dict[str, Any]:
    """Run the benchmark, print its table and write its JSON."""
    runs = repetitions(5)
    settings = clonebot_settings()
    async with DockerClient(settings.docker_host) as docker:
        most = await _room(docker)
        levels = sorted({n for n in (*LEVELS, most) if n <= most})
        fleet = _Fleet(docker)
        try:
            async with SlackEmulator(bot_token=BOT_TOKEN) as slack, _serving(slack) as sender:
                samples = []
                for level in levels:
                    await fleet.grow(level)
                    samples.append(await _measure(sender, slack, level=level, runs=runs))
        finally:
            await fleet.remove()
    return _report(samples, most=most, runs=runs)


async def _room(docker: DockerClient) -> int:
    """How many more (IPv4) networks the engine's address pools have room for."""
    info = await docker.api.system.info()
    pools = [(p["Base"], p["Size"]) for p in info.get("DefaultAddressPools") or []]
    subnets = [
        ipaddress.IPv4Network(c["Subnet"], strict=False)
        for n in await docker.list_networks(labels=[])
        for c in (n.get("IPAM") or {}).get("Config") or []
        if "." in c.get("Subnet", "")
    ]
    room = 0
    for base, size in pools or DOCKER_POOLS:
        pool = ipaddress.IPv4Network(base)
        room += 2 ** (size - pool.prefixlen) - sum(s.subnet_of(pool) for s in subnets)
    return max(room, 1)


class _Fleet:
    """The benchmark's environments: three running containers each, on networks of ours
    (ENVS_PER_NETWORK environments to a network, as many addresses as a /24 has)."""

    def __init__(self, docker: DockerClient) -> None:
        self.docker = docker
        self.prefix = new_name("bforms")
        self.envs = 0
        self.containers: list[str] = []  # ids, removed whatever happens
        self.networks: list[str] = []

    async def grow(self, envs: int) -> None:
        """Environments up to ``envs``, their containers made PARALLEL at a time."""
        started, first = time.perf_counter(), self.envs
        while len(self.networks) * ENVS_PER_NETWORK < envs:
            name = f"{self.prefix}-net{len(self.networks)}"
            self.networks.append(await self.docker.create_network({"Name": name}))
        gate = asyncio.Semaphore(PARALLEL)
        # a TaskGroup: on a failure the other creations stop before the clean-up runs
        async with asyncio.TaskGroup() as group:
            for number in range(first, envs):
                for layer in LAYERS:
                    group.create_task(self._node(number, layer, gate))
        self.envs = envs
        took = time.perf_counter() - started
        print(f"  forms: {envs - first} more environments made in {took:.0f} s", flush=True)

    async def _node(self, number: int, layer: str, gate: asyncio.Semaphore) -> None:
        env = f"{self.prefix}n{number:03d}"
        labels = {PROJECT: env, SERVICE: layer, NUMBER: "1", ONEOFF: "False", OWNER: USER}
        network = self.networks[number // ENVS_PER_NETWORK]
        config = {
            "Image": IMAGE,
            "Cmd": ["sleep", "86400"],
            "Labels": labels,
            "HostConfig": {"NetworkMode": network},
        }
        async with gate:
            ref = await self.docker.create_container(name=f"{env}-{layer}-1", config=config)
            self.containers.append(ref)
            await self.docker.start_container(ref)

    async def remove(self) -> None:
        gate = asyncio.Semaphore(PARALLEL)

        async def remove(ref: str) -> None:
            async with gate:
                with contextlib.suppress(ClonebotError):  # clean-up: the others still go
                    await self.docker.remove_container(ref)

        await asyncio.gather(*(remove(ref) for ref in self.containers))
        for network in self.networks:
            with contextlib.suppress(ClonebotError):
                await self.docker.remove_network(network)


async def _measure(
    sender: SlackSender, slack: SlackEmulator, *, level: int, runs: int
) -> dict[str, float]:
    """One warm-up of each, then ``runs`` rounds: the median seconds of each at this level."""
    form: Timed = lambda: _open_form(sender, slack)  # noqa: E731
    listing = _EnvList(sender, slack)
    baseline: Timed = lambda: timed_script(BASELINE)  # noqa: E731
    times: dict[str, list[float]] = {"form_s": [], "list_s": [], "docker_s": []}
    for round_ in range(runs + 1):  # round 0 warms up
        for key, timed in (("form_s", form), ("list_s", listing.timed), ("docker_s", baseline)):
            took = await timed()
            if round_:
                times[key].append(took)
    if listing.count < level:
        raise CommandFailed(f"/env list showed {listing.count} environments, expected {level}+")
    return {"environments": float(level), "listed": float(listing.count)} | {
        key: median(values) for key, values in times.items()
    }


async def _open_form(sender: SlackSender, slack: SlackEmulator) -> float:
    payload = slash_command(command="/clone", user_id=USER, response_url=slack.response_url)
    started = time.perf_counter()
    reply = await sender.send(command_request(payload))
    if reply.status != 200:
        raise CommandFailed(f"/clone answered {reply.status}: {reply.text[:200]}")
    trigger = payload["trigger_id"]
    await slack.wait_for(
        "views.open", lambda p: p.get("trigger_id") == trigger, timeout_s=ANSWER_TIMEOUT_S
    )
    return time.perf_counter() - started


class _EnvList:
    """``/env list`` timed to its answer; ``count`` is how many environments it listed."""

    def __init__(self, sender: SlackSender, slack: SlackEmulator) -> None:
        self.sender, self.slack, self.count = sender, slack, 0

    async def timed(self) -> float:
        payload = slash_command(
            command="/env", user_id=USER, response_url=self.slack.response_url, text="list"
        )
        before = {id(r) for r in self.slack.responses}
        started = time.perf_counter()
        reply = await self.sender.send(command_request(payload))
        if reply.status != 200:
            raise CommandFailed(f"/env list answered {reply.status}: {reply.text[:200]}")
        answer = await self.slack.wait_for_response(
            lambda r: id(r) not in before, timeout_s=ANSWER_TIMEOUT_S
        )
        took = time.perf_counter() - started
        found = LISTED.search(str(answer.get("text", "")))
        if found is None:
            raise CommandFailed(f"/env list answered {str(answer.get('text'))[:200]!r}")
        self.count = int(found.group(1))
        return took


@contextlib.asynccontextmanager
async def _serving(slack: SlackEmulator) -> AsyncIterator[SlackSender]:
    """``clonebot serve`` in a child process until the block ends: a sender to its endpoint."""
    port, secret = _free_port(), secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="bench-forms-") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "SLACK_APP_TOKEN"}  # HTTP
        env |= {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": secret,
            "SLACK_API_URL": slack.api_url,
            "PORT": str(port),
            "CLONEBOT_HTTP_HOST": "127.0.0.1",
            "CLONEBOT_DATA_DIR": str(work),
            "DATABASE_URL": f"sqlite+aiosqlite:///{work / 'clonebot.db'}",
            "CLONEBOT_ROUTER_BIND": f"127.0.0.1:{_free_port()}",
            "CLONEBOT_ROUTER_DIR": str(work / "router"),
        }
        log = work / "serve.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "serve",
                cwd=ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        try:
            await _wait_healthy(port, proc=proc, log=log)
            url = f"http://127.0.0.1:{port}/slack/events"
            async with SlackSender(url=url, signing_secret=secret) as sender:
                yield sender
        finally:
            if proc.returncode is None:
                proc.terminate()  # our child, by its pid
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _wait_healthy(port: int, *, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline and proc.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-1500:]
    raise CommandFailed(f"clonebot serve did not answer /healthz in {START_TIMEOUT_S} s: {tail}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _report(samples: list[dict[str, float]], *, most: int, runs: int) -> dict[str, Any]:
    first, last = samples[0], samples[-1]
    for s in samples:
        for key in ("form_s", "list_s", "docker_s"):
            s[f"{key[:-2]}_vs_first"] = ratio(s[key], first[key])
        s["form_vs_docker"] = ratio(s["form_s"], s["docker_s"])
        s["list_vs_docker"] = ratio(s["list_s"], s["docker_s"])
    result: dict[str, Any] = {
        "runs": runs,
        "most_environments": most,
        "containers_per_environment": len(LAYERS),
        "targets": {"form_s_at_most_max": MAX_FORM_S, "vs_docker_at_most_max": MAX_VS_DOCKER},
        "levels": samples,
        "meets_target": last["form_s"] < MAX_FORM_S
        and last["form_vs_docker"] <= MAX_VS_DOCKER
        and last["list_vs_docker"] <= MAX_VS_DOCKER,
    }
    rows: list[tuple[str, object, str]] = []
    base = f"of {int(first['environments'])}"
    for s in samples:
        n, at_most = int(s["environments"]), s is last
        form_note = f"x{s['form_vs_first']:.2f} {base}" + (f"; target < {MAX_FORM_S}" * at_most)
        vs_note = f"target <= {MAX_VS_DOCKER}" * at_most
        docker = s["docker_vs_first"]
        rows += [
            (f"{n} environments: clone form (s)", s["form_s"], form_note),
            (f"{n} environments: /env list (s)", s["list_s"], f"x{s['list_vs_first']:.2f} {base}"),
            (f"{n} environments: docker ps + inspect (s)", s["docker_s"], f"x{docker:.2f} {base}"),
            (f"{n} environments: form / docker", s["form_vs_docker"], vs_note),
            (f"{n} environments: list / docker", s["list_vs_docker"], vs_note),
        ]
    rows.append(("meets the targets", result["meets_target"], ""))
    print_table(
        f"forms: /clone form and /env list as environments grow (medians of {runs} runs; "
        f"the pools allow {most})",
        rows,
    )
    write_results(NAME, result)
    return result

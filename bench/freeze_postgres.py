"""Freeze of a real PostgreSQL under pgbench writes: clonebot vs. pausing for the whole copy.

The source is Debian's postgresql-15 in an image built here, never pulled (``debootstrap
--variant=minbase --include=postgresql-15 bookworm`` then ``docker import``, by
``services/demo_image.py``; kept as ``clonebot-bench/postgres:15`` and built only when
missing). Its data directory is a named volume; the database is filled by ``pgbench -i -s
10`` (about 160 MB), then ``pgbench -c 4`` writes inside the container while each side runs.
Compared in each run, in turn:

* clonebot: ``CloneResult.freeze_ms`` (pre-copy while the source runs, then a short pause);
* baseline: ``docker pause SRC; docker run --rm -v VOL:/from -v DST:/to <image> cp -a /from/.
  /to/; docker unpause SRC`` -- the freeze is the wall time of that sequence.

The clone's PostgreSQL must then start (recovering from the crash-consistent copy) and answer
``SELECT count(*) FROM pgbench_accounts`` with the 1,000,000 rows of scale 10. Also shown:
which data files one second of pgbench writes changes, and their size (what a pass that copies
changed files whole copies, however little of them changed).

Target: clonebot's freeze <= 250 ms.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bench.freeze import pause_script
from bench.harness import (
    MB,
    CommandFailed,
    best_effort,
    cli,
    clonebot_settings,
    compose_labels,
    in_turn,
    medians,
    new_name,
    print_table,
    ratio,
    remove_environment,
    repetitions,
    timed_clone,
    timed_script,
    write_results,
)
from bench.sources import STATEFUL, create_network, create_volume, ensure_unpaused
from services.demo_image import ensure_postgres_image as build_postgres_image
from services.docker import DockerClient
from services.environments import PROJECT
from services.settings import Settings

NAME = "freeze-postgres"
RUNS = 3
PG_IMAGE = os.environ.get("BENCH_POSTGRES_IMAGE", "clonebot-bench/postgres:15")
MIRROR = os.environ.get("BENCH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SCALE, ROWS = 10, 1_000_000  # pgbench -i -s 10: 100,000 accounts per unit of scale
CLIENTS, WRITES_S = 4, 600  # pgbench -c, and -T: a bound; it is stopped after each side
TARGET_MS = 250
BIN = "/usr/lib/postgresql/15/bin"
DATA = "/var/lib/postgresql/data"
SOCKET = "/tmp"  # not /run/postgresql: the imported image's /run is whatever debootstrap left
# the node's command: initdb at first start (the volume is empty), then the server
START = (
    f"chown postgres:postgres {DATA} && chmod 700 {DATA} && "
    f'{{ [ -s {DATA}/PG_VERSION ] || su postgres -c "{BIN}/initdb -D {DATA} --auth=trust '
    f'>/dev/null"; }} && exec su postgres -c "exec {BIN}/postgres -D {DATA} '
    f"-c listen_addresses='*' -c unix_socket_directories={SOCKET}\""
)
PGBENCH_PID = "/tmp/pgbench.pid"


async def main() -> dict[str, Any]:
    """Build the image if missing, run the benchmark, print its table and write its JSON."""
    await ensure_postgres_image()
    settings = clonebot_settings()
    source = new_name("bpg")
    async with DockerClient(settings.docker_host) as docker:
        try:
            node, volume = await _create_source(source)
            changed = await _under_writes(node, lambda: _changed_files(node, seconds=1))
            runs = [
                await _one_run(docker, settings, source=source, node=node, volume=volume, run=i)
                for i in range(repetitions(RUNS))
            ]
        finally:
            await remove_environment(docker, source)
    return _report(runs, changed)


async def ensure_postgres_image() -> None:
    """``clonebot-bench/postgres:15``, built from Debian's packages when it is not there yet
    (by ``services/demo_image.py``, which builds the demo's image too)."""
    settings = clonebot_settings()
    async with DockerClient(settings.docker_host) as docker:
        await build_postgres_image(
            docker, image=PG_IMAGE, busybox=settings.busybox, mirror=MIRROR, say=print
        )


async def _create_source(env: str) -> tuple[str, str]:
    """The stateful ``db`` node running PostgreSQL on a named volume, filled by pgbench -i."""
    await create_network(env=env)
    volume = await create_volume(env=env)
    node = f"{env}_db_1"
    await cli(
        "docker", "run", "-d", "--name", node, "--network", f"{env}_default",
        "--network-alias", "db", *compose_labels(env=env, layer="db", number=1), *STATEFUL,
        "-v", f"{volume}:{DATA}", PG_IMAGE, "sh", "-c", START,
    )  # fmt: skip
    await _wait_for_postgres(node, timeout_s=60)
    await _psql(node, cmd=f"{BIN}/pgbench -q -i -s {SCALE}")
    await _psql(node, cmd=f"{BIN}/psql -c CHECKPOINT")
    return node, volume


async def _psql(node: str, *, cmd: str) -> str:
    """Run a PostgreSQL client in ``node`` as the ``postgres`` user through the socket."""
    return await cli("docker", "exec", node, "sh", "-c", f"{cmd} -h {SOCKET} -U postgres postgres")


async def _wait_for_postgres(node: str, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await _psql(node, cmd=f"{BIN}/psql -tAc 'SELECT 1'")
            return
        except CommandFailed:
            if time.monotonic() > deadline:
                logs = await cli("docker", "logs", "--tail", "20", node)
                raise CommandFailed(f"PostgreSQL in {node} does not answer: {logs}") from None
            await asyncio.sleep(0.5)


async def _one_run(
    docker: DockerClient, settings: Settings, *, source: str, node: str, volume: str, run: int
) -> dict[str, float]:
    """One clone and one pause-for-the-whole-copy, in turn, each under pgbench writes; the
    clone must then answer. What they made is removed."""
    clone, target = f"{source}-c{run}", f"{source}-m{run}_data"
    try:
        (result, clone_s), manual_s = await in_turn(
            run,
            clonebot=lambda: _under_writes(
                node, lambda: timed_clone(docker, settings, source=source, name=clone)
            ),
            baseline=lambda: _under_writes(
                node, lambda: _pause_and_copy(node=node, volume=volume, target=target)
            ),
        )
        if result.state != "succeeded":
            raise CommandFailed(f"clone {clone} failed: {result.error}")
        answer_s, rows = await _clone_answers(docker, clone)
    finally:
        await best_effort(node, ensure_unpaused(node))
        await remove_environment(docker, clone)
        await best_effort(target, cli("docker", "volume", "rm", "-f", target))
    return {
        "clonebot_freeze_ms": float(result.freeze_ms),
        "clonebot_clone_s": clone_s,
        "clone_answers_s": answer_s,
        "clone_pgbench_accounts": float(rows),
        "manual_freeze_ms": manual_s * 1000,
    }


async def _pause_and_copy(*, node: str, volume: str, target: str) -> float:
    await cli("docker", "volume", "create", target)  # beforehand: not part of the freeze
    return await timed_script(pause_script(node=node, source=volume, target=target))


async def _under_writes(node: str, measure: Any) -> Any:
    """``measure()`` while ``pgbench -c 4`` writes in ``node``; pgbench is stopped after it."""
    cmd = f"echo $$ > {PGBENCH_PID}; exec {BIN}/pgbench -n -c {CLIENTS} -T {WRITES_S}"
    writes = await asyncio.create_subprocess_exec(
        "docker", "exec", node, "sh", "-c", f"{cmd} -h {SOCKET} -U postgres postgres",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await _wait_for_transactions(node)
        return await measure()
    finally:
        await best_effort(node, ensure_unpaused(node))
        await best_effort(
            "pgbench", cli("docker", "exec", node, "sh", "-c", f"kill -INT $(cat {PGBENCH_PID})")
        )
        try:
            await asyncio.wait_for(writes.communicate(), timeout=30)
        except TimeoutError:
            writes.kill()
            await writes.wait()


async def _wait_for_transactions(node: str) -> None:
    """Until pgbench has committed transactions (its clients are connected and writing)."""
    query = f"{BIN}/psql -tAc 'SELECT count(*) FROM pgbench_history'"
    before = int((await _psql(node, cmd=query)).strip())
    for _ in range(100):
        await asyncio.sleep(0.1)
        if int((await _psql(node, cmd=query)).strip()) > before:
            await asyncio.sleep(1)  # a steady state of writes
            return
    raise CommandFailed(f"pgbench does not write in {node}")


async def _changed_files(node: str, *, seconds: float) -> dict[str, int]:
    """The data files pgbench's writes change in ``seconds`` (path: size in bytes): what a pass
    copying changed files whole copies, however short the time since the last pass."""
    await cli("docker", "exec", node, "touch", "/tmp/since")
    await asyncio.sleep(seconds)
    found = f"find {DATA} -type f -newer /tmp/since -printf '%s %P\\n'"
    lines = (await cli("docker", "exec", node, "sh", "-c", found)).splitlines()
    return {path: int(size) for size, path in (line.split(" ", 1) for line in lines)}


async def _clone_answers(docker: DockerClient, clone: str) -> tuple[float, int]:
    """Time (s) until the clone's PostgreSQL answers, and its ``pgbench_accounts`` rows."""
    started = time.monotonic()
    [container] = await docker.list_containers(labels=[f"{PROJECT}={clone}"])
    node = container["Names"][0].lstrip("/")
    await _wait_for_postgres(node, timeout_s=60)
    rows = await _psql(node, cmd=f"{BIN}/psql -tAc 'SELECT count(*) FROM pgbench_accounts'")
    return time.monotonic() - started, int(rows.strip())


def _report(runs: list[dict[str, float]], changed: dict[str, int]) -> dict[str, Any]:
    mid = medians(runs)
    changed_mb = sum(changed.values()) / MB
    result: dict[str, Any] = {
        "postgres_image": PG_IMAGE,
        "pgbench": {"scale": SCALE, "clients": CLIENTS},
        "runs": len(runs),
        "medians": mid,
        "samples": runs,
        "changed_in_1s_of_writes": changed,
        "target_freeze_ms_max": TARGET_MS,
        "clones_answered": all(r["clone_pgbench_accounts"] == ROWS for r in runs),
        "meets_target": mid["clonebot_freeze_ms"] <= TARGET_MS,
    }
    print_table(
        f"freeze: PostgreSQL 15 under pgbench -c {CLIENTS}, scale {SCALE} "
        f"(medians of {len(runs)} runs)",
        [
            ("clonebot freeze_ms", mid["clonebot_freeze_ms"], f"target <= {TARGET_MS}"),
            ("clonebot whole clone (s)", mid["clonebot_clone_s"], ""),
            ("clone answers after (s)", mid["clone_answers_s"], f"{ROWS:,} accounts"),
            ("pause + cp -a + unpause (ms)", mid["manual_freeze_ms"], ""),
            (
                "ratio baseline/clonebot freeze",
                ratio(mid["manual_freeze_ms"], mid["clonebot_freeze_ms"]),
                "",
            ),
        ],
    )
    print(f"  freeze_ms per run: {[int(r['clonebot_freeze_ms']) for r in runs]}")
    print(f"  baseline per run (ms): {[int(r['manual_freeze_ms']) for r in runs]}")
    print(f"  files changed by 1 s of pgbench writes: {len(changed)}, {changed_mb:.1f} MB in all")
    print(f"  clones answered with {ROWS:,} accounts: {result['clones_answered']}")
    write_results(NAME, result)
    return result

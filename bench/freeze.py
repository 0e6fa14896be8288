"""Freeze: how long a source that keeps writing is frozen, by clonebot vs. by hand.

The source's process appends ``<i> <time in ns>`` to ``/data/log`` in its volume every ~2 ms
(busybox ``date`` has no ``%N``: the time is ash's ``$EPOCHREALTIME``, in µs); the volume also
holds a big file of 256 MiB, then 1 GiB, then (no big file) 100,000 small files in 100
folders, where a freeze that scanned every file could not hold the target. Compared at each:

* clonebot: ``CloneResult.freeze_ms`` (pre-copy while the source runs, then a short pause);
* baseline: ``docker pause SRC; docker run --rm -v VOL:/from -v DST:/to <image> cp -a /from/.
  /to/; docker unpause SRC`` -- the freeze is the wall time of that sequence;
* for both, the writer's longest stall: the largest gap between consecutive lines of its log.

Target: clonebot's freeze <= 250 ms, and not growing with the size of the volume nor with its
number of files ("final pass per 10,000 files": the freeze's growth from the 256 MiB volume to
the 100,000 files, per 10,000 files).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from itertools import pairwise
from typing import Any, TypeVar

from bench.harness import (
    IMAGE,
    NO_NETWORK,
    best_effort,
    cli,
    clonebot_settings,
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
from bench.sources import create_network, create_volume, ensure_unpaused, fill_volume, run_node
from services.docker import DockerClient
from services.settings import Settings
from services.volumes import ensure_helper_image

NAME = "freeze"
RUNS_BY_MIB = {256: 5, 1024: 3}  # big file size (MiB): default repetitions
SMALL_FILES, SMALL_RUNS = 100_000, 3
# written by the helper image's perl: a shell loop takes minutes for 100,000 files
FILL_FILES = (
    'perl -e \'for $d (1 .. 100) { mkdir "/data/f$d"; for $i (1 .. PER_DIR) { '
    'open F, ">", "/data/f$d/$i" or die; print F "$d $i\\n"; close F } }\''
)
LOG = "/data/log"
WRITER = (
    f'i=0; while :; do i=$((i+1)); echo "$i ${{EPOCHREALTIME/./}}000" >> {LOG}; usleep 2000; done'
)
TARGET_MS = 250
A = TypeVar("A")


async def main() -> dict[str, Any]:
    """Run the benchmark at each size, print its table and write its JSON."""
    settings = clonebot_settings()
    by_size: dict[int, list[dict[str, float]]] = {}
    async with DockerClient(settings.docker_host) as docker:
        for mib, runs in RUNS_BY_MIB.items():
            by_size[mib] = await _measure_size(docker, settings, mib=mib, runs=repetitions(runs))
        files = await _measure_size(
            docker, settings, mib=0, files=SMALL_FILES, runs=repetitions(SMALL_RUNS)
        )
    return _report(by_size, files)


async def _measure_size(
    docker: DockerClient, settings: Settings, *, mib: int, runs: int, files: int = 0
) -> list[dict[str, float]]:
    """A fresh source with a big file of ``mib`` MiB (or ``files`` small files); ``runs``
    interleaved runs on it."""
    source = new_name("bfz")
    try:
        node, volume = await _create_source(env=source, mib=mib, files=files, settings=settings)
        return [
            await _one_run(docker, settings, source=source, node=node, volume=volume, run=i)
            for i in range(runs)
        ]
    finally:
        await remove_environment(docker, source)


async def _create_source(*, env: str, mib: int, files: int, settings: Settings) -> tuple[str, str]:
    """The stateful ``db`` node running the writer, its volume holding the big file."""
    await create_network(env=env)
    volume = await create_volume(env=env)
    if mib:
        await fill_volume(volume=volume, files_mib={"big": mib})
    if files:
        async with DockerClient(settings.docker_host) as docker:
            await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
        script = FILL_FILES.replace("PER_DIR", str(files // 100))
        await cli(
            "docker", "run", "--rm", *NO_NETWORK, "-v", f"{volume}:/data",
            settings.helper_image, "sh", "-c", script,
        )  # fmt: skip
    node = await run_node(
        env=env, layer="db", number=1, command=WRITER, volume=volume, stateful=True
    )
    await _wait_for_writer(node)
    return node, volume


async def _wait_for_writer(node: str) -> None:
    for _ in range(100):
        if (await cli("docker", "exec", node, "sh", "-c", f"cat {LOG} | wc -l")).strip() != "0":
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the writer in {node} does not write")


async def _one_run(
    docker: DockerClient, settings: Settings, *, source: str, node: str, volume: str, run: int
) -> dict[str, float]:
    """One clone and one pause-for-the-whole-copy, interleaved; what they made is removed."""
    clone, target = f"{source}-c{run}", f"{source}-m{run}_data"
    try:
        ((result, clone_s), clone_stall), (manual_s, manual_stall) = await in_turn(
            run,
            clonebot=lambda: _with_stall(
                node, lambda: timed_clone(docker, settings, source=source, name=clone)
            ),
            baseline=lambda: _pause_and_copy(node=node, volume=volume, target=target),
        )
    finally:
        await best_effort(node, ensure_unpaused(node))
        await remove_environment(docker, clone)
        await best_effort(target, cli("docker", "volume", "rm", "-f", target))
    return {
        "clonebot_freeze_ms": float(result.freeze_ms),
        "clonebot_stall_ms": clone_stall,
        "clonebot_clone_s": clone_s,
        "manual_freeze_ms": manual_s * 1000,
        "manual_stall_ms": manual_stall,
    }


async def _pause_and_copy(*, node: str, volume: str, target: str) -> tuple[float, float]:
    """The baseline: its freeze (s), and the writer's longest stall (ms) meanwhile."""
    await cli("docker", "volume", "create", target)  # beforehand: not part of the freeze
    script = pause_script(node=node, source=volume, target=target)
    return await _with_stall(node, lambda: timed_script(script))


def pause_script(*, node: str, source: str, target: str) -> str:
    """What a person would type: freeze the source for the whole copy."""
    copy = f"docker run --rm {' '.join(NO_NETWORK)} -v {source}:/from -v {target}:/to {IMAGE}"
    pause, unpause = f"docker pause {node} >/dev/null", f"docker unpause {node} >/dev/null"
    return f"{pause}\n{copy} cp -a /from/. /to/\n{unpause}"


async def _with_stall(node: str, measure: Callable[[], Awaitable[A]]) -> tuple[A, float]:
    """``measure()``'s value, and the writer's longest stall (ms) while it ran."""
    await cli("docker", "exec", node, "sh", "-c", f": > {LOG}")  # the writer appends: safe
    since = time.time_ns()
    value = await measure()
    until = time.time_ns()
    await asyncio.sleep(0.1)  # a line after the window, to close the last gap
    log = await cli("docker", "exec", node, "cat", LOG)
    return value, longest_gap_ms(log, since_ns=since, until_ns=until)


def longest_gap_ms(log: str, *, since_ns: int, until_ns: int) -> float:
    """The largest gap between consecutive log lines that overlaps [since, until]."""
    stamps = []
    for line in log.split("\n")[:-1]:  # the last piece is empty, or a line being written
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit():
            stamps.append(int(fields[1]))
    gaps = [b - a for a, b in pairwise(stamps) if b >= since_ns and a <= until_ns]
    return max(gaps, default=0) / 1e6


def _report(
    by_size: dict[int, list[dict[str, float]]], files: list[dict[str, float]]
) -> dict[str, Any]:
    mids = {mib: medians(samples) for mib, samples in by_size.items()}
    files_mid = medians(files)
    freeze = {mib: mid["clonebot_freeze_ms"] for mib, mid in mids.items()}
    small, large = min(freeze), max(freeze)
    result: dict[str, Any] = {
        "sizes_mib": {
            mib: {"runs": len(samples), "medians": mids[mib], "samples": samples}
            for mib, samples in by_size.items()
        },
        "target_freeze_ms_max": TARGET_MS,
        "freeze_growth_large_over_small": ratio(freeze[large], freeze[small]),
        "small_files": {
            "files": SMALL_FILES,
            "runs": len(files),
            "medians": files_mid,
            "samples": files,
        },
        "final_pass_ms_per_10000_files": (files_mid["clonebot_freeze_ms"] - freeze[small])
        / (SMALL_FILES / 10_000),
        "meets_target": max([*freeze.values(), files_mid["clonebot_freeze_ms"]]) <= TARGET_MS,
    }
    for mib, mid in mids.items():
        _print_size(f"{mib} MiB", mid, runs=len(by_size[mib]))
    _print_size(f"{SMALL_FILES:,} small files", files_mid, runs=len(files))
    per = result["final_pass_ms_per_10000_files"]
    print(f"  final pass per 10,000 files in the volume: {per:+.1f} ms (vs. the {small} MiB one)")
    growth = result["freeze_growth_large_over_small"]
    print(f"  clonebot freeze_ms at {large} MiB / at {small} MiB: {growth:.2f} (flat: about 1)")
    write_results(NAME, result)
    return result


def _print_size(what: str, mid: dict[str, float], *, runs: int) -> None:
    print_table(
        f"freeze: {what} in the volume (medians of {runs} runs)",
        [
            ("clonebot freeze_ms", mid["clonebot_freeze_ms"], f"target <= {TARGET_MS}"),
            ("clonebot writer's longest stall (ms)", mid["clonebot_stall_ms"], ""),
            ("clonebot whole clone (s)", mid["clonebot_clone_s"], ""),
            ("pause + cp -a + unpause (ms)", mid["manual_freeze_ms"], ""),
            ("baseline writer's longest stall (ms)", mid["manual_stall_ms"], ""),
            (
                "ratio baseline/clonebot freeze",
                ratio(mid["manual_freeze_ms"], mid["clonebot_freeze_ms"]),
                "",
            ),
        ],
    )

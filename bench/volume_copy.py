"""Volume copy: a stateful node's 1 GiB named volume, cloned by clonebot vs. copied by hand.

clonebot clones in a child process (``bench.child``). Compared: its throughput over the
"pre-copy" step (StepStarted to StepDone) and over the whole clone, against the throughput of
``docker volume create DST && docker run --rm -v SRC:/from -v DST:/to <image> cp -a /from/. /to/``.
Also clonebot's peak memory growth while cloning (peak RSS minus RSS after imports): volume
data must never pass through clonebot. Targets: throughput ratio >= 0.8, growth < 50 MB.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bench.harness import (
    IMAGE,
    MB,
    MIB,
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
    timed_script,
    write_results,
)
from bench.sources import create_network, create_volume, fill_volume, run_node
from services.docker import DockerClient

NAME = "volume_copy"
FILES_MIB = {"part1": 256, "part2": 256, "part3": 256, "part4": 256}
SIZE = sum(FILES_MIB.values()) * MIB
TARGET_RATIO = 0.8
TARGET_GROWTH_MB = 50.0


async def main() -> dict[str, Any]:
    """Run the benchmark, print its table and write its JSON."""
    runs = repetitions(3)
    settings = clonebot_settings()
    source = new_name("bvc")
    async with DockerClient(settings.docker_host) as docker:
        try:
            volume = await _create_source(env=source)
            samples = [
                await _one_run(docker, source=source, volume=volume, run=i) for i in range(runs)
            ]
        finally:
            await remove_environment(docker, source)
    return _report(samples)


async def _create_source(*, env: str) -> str:
    """One stateful ``db`` node that sleeps, with its volume filled before any timing."""
    await create_network(env=env)
    volume = await create_volume(env=env)
    await fill_volume(volume=volume, files_mib=FILES_MIB)
    await run_node(
        env=env, layer="db", number=1, command="exec sleep 2147483647", volume=volume, stateful=True
    )
    return volume


async def _one_run(docker: DockerClient, *, source: str, volume: str, run: int) -> dict[str, float]:
    """One clone (in a child process) and one manual copy, interleaved; both removed after."""
    clone, target = f"{source}-c{run}", f"{source}-m{run}_data"
    try:
        child, manual_s = await in_turn(
            run,
            clonebot=lambda: _clone_in_child(source=source, name=clone),
            baseline=lambda: timed_script(manual_script(source=volume, target=target)),
        )
        await _check_copied(f"{clone}_data")
        await _check_copied(target)
    finally:
        await remove_environment(docker, clone)
        await best_effort(target, cli("docker", "volume", "rm", "-f", target))
    return _figures(child, manual_s)


async def _check_copied(volume: str) -> None:
    """Refuse a figure for a copy that is not complete: every file, at its full size."""
    files = [f"/d/{name}" for name in FILES_MIB]
    mount = ("-v", f"{volume}:/d:ro")
    out = await cli("docker", "run", "--rm", *NO_NETWORK, *mount, IMAGE, "stat", "-c", "%s", *files)
    if sum(int(size) for size in out.split()) != SIZE:
        raise RuntimeError(f"{volume} holds {out.split()} bytes, not {FILES_MIB} MiB")


async def _clone_in_child(*, source: str, name: str) -> dict[str, float]:
    out = await cli(sys.executable, "-m", "bench.child", source, name)
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def manual_script(*, source: str, target: str) -> str:
    """What a person would type to copy a volume (no network: none is needed)."""
    copy = f"docker run --rm {' '.join(NO_NETWORK)} -v {source}:/from -v {target}:/to {IMAGE}"
    return f"docker volume create {target} >/dev/null && {copy} cp -a /from/. /to/"


def _figures(child: dict[str, float], manual_s: float) -> dict[str, float]:
    growth_mb = (child["peak_kb"] - child["rss_kb"]) * 1024 / MB
    pre_copy = SIZE / MB / child["pre_copy_s"]
    whole = SIZE / MB / child["clone_s"]
    manual = SIZE / MB / manual_s
    return {
        "clone_s": child["clone_s"],
        "pre_copy_s": child["pre_copy_s"],
        "manual_s": manual_s,
        "pre_copy_mb_s": pre_copy,
        "clone_mb_s": whole,
        "manual_mb_s": manual,
        "ratio_pre_copy": ratio(pre_copy, manual),
        "ratio_clone": ratio(whole, manual),
        "rss_mb": child["rss_kb"] * 1024 / MB,
        "growth_mb": growth_mb,
    }


def _report(samples: list[dict[str, float]]) -> dict[str, Any]:
    mid = medians(samples)
    result: dict[str, Any] = {"runs": len(samples), "bytes": SIZE, "medians": mid}
    result["ratio_pre_copy_of_medians"] = ratio(mid["pre_copy_mb_s"], mid["manual_mb_s"])
    result["ratio_clone_of_medians"] = ratio(mid["clone_mb_s"], mid["manual_mb_s"])
    result["targets"] = {"ratio_min": TARGET_RATIO, "growth_mb_max": TARGET_GROWTH_MB}
    result["meets_targets"] = (
        result["ratio_pre_copy_of_medians"] >= TARGET_RATIO and mid["growth_mb"] < TARGET_GROWTH_MB
    )
    result["samples"] = samples
    print_table(
        f"volume_copy: {SIZE // MIB} MiB volume (medians of {len(samples)} runs)",
        [
            ("clonebot whole clone (s)", mid["clone_s"], f"{mid['clone_mb_s']:.0f} MB/s"),
            ("clonebot pre-copy step (s)", mid["pre_copy_s"], f"{mid['pre_copy_mb_s']:.0f} MB/s"),
            ("docker run cp -a (s)", mid["manual_s"], f"{mid['manual_mb_s']:.0f} MB/s"),
            ("ratio pre-copy/cp", result["ratio_pre_copy_of_medians"], f"target >= {TARGET_RATIO}"),
            ("  median of per-run ratios", mid["ratio_pre_copy"], ""),
            ("ratio whole clone/cp", result["ratio_clone_of_medians"], ""),
            ("  median of per-run ratios", mid["ratio_clone"], ""),
            ("clonebot RSS after imports (MB)", mid["rss_mb"], ""),
            ("clonebot peak growth (MB)", mid["growth_mb"], f"target < {TARGET_GROWTH_MB:.0f}"),
        ],
    )
    write_results(NAME, result)
    return result

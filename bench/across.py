"""Across engines: a stateful node's 1 GiB volume cloned from one Docker host to another, by
clonebot (``clone --on``) and by hand, both through this machine over the engines' TLS API.

Two hosts of the test fleet (``tests/fleet/hosts.py``: dockerd in network namespaces of their
own, reached over TCP with TLS client certificates) stand for two servers. The source, on
east, is a ``db`` node whose writer appends to its volume all along. Compared, in the same run:

* clonebot's whole clone onto west (``clone_environment`` with the target engine, planning,
  the node's commit carried, the relay, the freeze) in a process of its own, against what a
  person types to copy a consistent volume to another host: ``docker pause``, then
  ``docker -H east run … tar -c | docker -H west run -i … tar -x``, then ``docker unpause``
  (the ``tar | ssh`` way, the data through this machine as clonebot's is);
* how long the source is frozen: clonebot's freeze against the pause of the whole copy.

Also clonebot's peak memory growth while cloning: the data must never pass through it in
bulk (the relay holds one chunk per direction).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from bench.harness import (
    IMAGE,
    MB,
    MIB,
    best_effort,
    cli,
    in_turn,
    medians,
    new_name,
    print_table,
    ratio,
    remove_environment,
    repetitions,
    write_results,
)
from bench.sources import create_network, create_volume, fill_volume, run_node
from services.fleet import EngineSpec
from tests.fleet.hosts import Fleet, Host

NAME = "across"
FILES_MIB = {"part1": 256, "part2": 256, "part3": 256, "part4": 256}
SIZE = sum(FILES_MIB.values()) * MIB
WRITER = 'i=0; while :; do i=$((i+1)); echo "$i" >> /data/log; usleep 2000; done'
TARGET_RATIO = 0.8
TARGET_GROWTH_MB = 50.0


async def main() -> dict[str, Any]:
    """Start two hosts, run the benchmark, print its table and write its JSON."""
    runs = repetitions(3)
    fleet = Fleet(size=2)
    await asyncio.to_thread(fleet.start)  # it runs an event loop of its own
    try:
        east, west = fleet.hosts
        return await _bench(fleet, east, west, runs)
    finally:
        await asyncio.to_thread(fleet.stop)


async def _bench(fleet: Fleet, east: Host, west: Host, runs: int) -> dict[str, Any]:
    certs = fleet.work / "engine-certs"
    for host, name in ((east, "east"), (west, "west")):
        (certs / name).mkdir(parents=True, exist_ok=True)
        for pem in ("ca.pem", "cert.pem", "key.pem"):
            (certs / name / pem).write_bytes((host.tls_dir / pem).read_bytes())
    env = {
        # both engines remote, as clonebot's host sees two servers; "local" is the shared one
        "CLONEBOT_ENGINES": f"east={east.tcp_url},west={west.tcp_url}",
        "CLONEBOT_ENGINE_CERTS": str(certs),
    }
    source = new_name("bac")
    # the bench's own docker commands reach east by its socket (the setup is not timed)
    shared = os.environ.get("DOCKER_HOST", "")
    os.environ["DOCKER_HOST"] = east.unix_url
    east_docker = EngineSpec("east", east.tcp_url, east.tls_dir).connect()
    west_docker = EngineSpec("west", west.tcp_url, west.tls_dir).connect()
    try:
        await create_network(env=source)
        volume = await create_volume(env=source)
        await fill_volume(volume=volume, files_mib=FILES_MIB)
        master = await run_node(
            env=source, layer="db", number=1, command=WRITER, volume=volume, stateful=True
        )
        samples = []
        for run in range(runs):
            clone, target = f"{source}-c{run}", f"{source}-m{run}_data"
            child, manual = await in_turn(
                run,
                clonebot=lambda clone=clone: _clone_in_child(env, source=source, name=clone),
                baseline=lambda target=target: _by_hand(
                    east, west, master=master, source=volume, target=target
                ),
            )
            await _check_copied(west, f"{clone}_data")
            await _check_copied(west, target)
            await remove_environment(west_docker, clone)
            await best_effort(target, west_docker.remove_volume(target))
            samples.append(_figures(child, manual))
    finally:
        await remove_environment(east_docker, source)
        await east_docker.close()
        await west_docker.close()
        os.environ["DOCKER_HOST"] = shared
    return _report(samples)


async def _clone_in_child(env: dict[str, str], *, source: str, name: str) -> dict[str, float]:
    args = [sys.executable, "-m", "bench.child", source, name, "--from", "east", "--on", "west"]
    proc = await asyncio.create_subprocess_exec(
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the clone failed: {err.decode()[-800:]}")
    figures: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return figures


async def _by_hand(
    east: Host, west: Host, *, master: str, source: str, target: str
) -> dict[str, float]:
    """Pause, tar from east's helper into west's through this machine, unpause."""

    def docker(host: Host) -> str:
        tls = host.tls_env()
        return (
            f"docker -H {tls['DOCKER_HOST']} --tlsverify --tlscacert {host.tls_dir}/ca.pem "
            f"--tlscert {host.tls_dir}/cert.pem --tlskey {host.tls_dir}/key.pem"
        )

    send = f"{docker(east)} run --rm --network none -v {source}:/from:ro {IMAGE} "
    send += "tar -C /from -cf - ."
    receive = f"{docker(west)} run --rm -i --network none -v {target}:/to {IMAGE} tar -C /to -xf -"
    await cli("bash", "-c", f"{docker(west)} volume create {target} >/dev/null")
    started = time.perf_counter()
    await cli("bash", "-c", f"{docker(east)} pause {master}")
    try:
        await cli("bash", "-euo", "pipefail", "-c", f"{send} | {receive}")
    finally:
        await cli("bash", "-c", f"{docker(east)} unpause {master}")
    seconds = time.perf_counter() - started
    return {"manual_s": seconds}


async def _check_copied(west: Host, volume: str) -> None:
    """Refuse a figure for a copy that is not complete: every file, at its full size."""
    files = [f"/d/{name}" for name in FILES_MIB]
    out = west.docker(
        "run", "--rm", "--network", "none", "-v", f"{volume}:/d:ro", IMAGE, "stat", "-c", "%s",
        *files,
    )  # fmt: skip
    if sum(int(size) for size in out.split()) != SIZE:
        raise RuntimeError(f"{volume} holds {out.split()} bytes, not {FILES_MIB} MiB")


def _figures(child: dict[str, float], manual: dict[str, float]) -> dict[str, float]:
    clone_s, manual_s = child["clone_s"], manual["manual_s"]
    return {
        "clone_s": clone_s,
        "manual_s": manual_s,
        "clone_mb_s": SIZE / MB / clone_s,
        "manual_mb_s": SIZE / MB / manual_s,
        "ratio_speed": ratio(manual_s, clone_s),
        "freeze_ms": child["freeze_ms"],
        "pause_ms": manual_s * 1000,
        "growth_mb": (child["peak_kb"] - child["rss_kb"]) * 1024 / MB,
    }


def _report(samples: list[dict[str, float]]) -> dict[str, Any]:
    mid = medians(samples)
    result: dict[str, Any] = {"runs": len(samples), "bytes": SIZE, "medians": mid}
    result["ratio_speed_of_medians"] = ratio(mid["manual_s"], mid["clone_s"])
    result["freeze_ratio_of_medians"] = ratio(mid["freeze_ms"], mid["pause_ms"])
    result["targets"] = {"ratio_min": TARGET_RATIO, "growth_mb_max": TARGET_GROWTH_MB}
    result["meets_targets"] = (
        result["ratio_speed_of_medians"] >= TARGET_RATIO and mid["growth_mb"] < TARGET_GROWTH_MB
    )
    result["samples"] = samples
    print_table(
        f"across: {SIZE // MIB} MiB volume, east to west over TLS (medians of {len(samples)} runs)",
        [
            ("clonebot clone --on west (s)", mid["clone_s"], f"{mid['clone_mb_s']:.0f} MB/s"),
            ("pause + tar | tar + unpause (s)", mid["manual_s"], f"{mid['manual_mb_s']:.0f} MB/s"),
            ("speed ratio by hand/clonebot", result["ratio_speed_of_medians"],
             f"target >= {TARGET_RATIO}"),
            ("clonebot freeze (ms)", mid["freeze_ms"], ""),
            ("source paused by hand (ms)", mid["pause_ms"], ""),
            ("freeze ratio clonebot/by hand", result["freeze_ratio_of_medians"], ""),
            ("clonebot peak growth (MB)", mid["growth_mb"], f"target < {TARGET_GROWTH_MB:.0f}"),
        ],
    )  # fmt: skip
    write_results(NAME, result)
    return result

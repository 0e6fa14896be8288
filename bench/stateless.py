"""Stateless: clone 10 busybox httpd nodes, against a bash script that runs them by hand.

Compared, in wall time: clonebot's ``clone_environment`` (planning from the live source
included) and a bash script that creates the same network and the same 10 started containers
(same image, command, Compose labels and DNS alias) one by one with the Docker CLI.
Target: clonebot / script <= 0.5.
"""

from __future__ import annotations

import shlex
from typing import Any

from bench.harness import (
    IMAGE,
    clonebot_settings,
    compose_labels,
    in_turn,
    median,
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
from bench.sources import create_network, run_nodes
from services.docker import DockerClient
from services.environments import PROJECT
from services.settings import Settings

NAME = "stateless"
NODES = 10
LAYER = "web"
COMMAND = "exec httpd -f -p 8080"
TARGET = 0.5


async def main() -> dict[str, Any]:
    """Run the benchmark, print its table and write its JSON."""
    runs = repetitions(5)
    settings = clonebot_settings()
    source = new_name("bst")
    async with DockerClient(settings.docker_host) as docker:
        try:
            await create_network(env=source)
            await run_nodes(env=source, layer=LAYER, count=NODES, command=COMMAND)
            samples = [await _one_run(docker, settings, source=source, run=i) for i in range(runs)]
        finally:
            await remove_environment(docker, source)
    return _report(samples)


async def _one_run(
    docker: DockerClient, settings: Settings, *, source: str, run: int
) -> dict[str, float]:
    """One clone and one script, interleaved; both are removed afterwards."""
    clone, manual = f"{source}-c{run}", f"{source}-m{run}"
    try:
        (result, clone_s), script_s = await in_turn(
            run,
            clonebot=lambda: timed_clone(docker, settings, source=source, name=clone),
            baseline=lambda: timed_script(manual_script(env=manual)),
        )
        if len(result.nodes) != NODES:
            raise RuntimeError(f"the clone has {len(result.nodes)} nodes, not {NODES}")
    finally:
        await remove_environment(docker, clone)
        await remove_environment(docker, manual)
    return {"clonebot_s": clone_s, "script_s": script_s, "ratio": ratio(clone_s, script_s)}


def manual_script(*, env: str) -> str:
    """What a person would type: one network, then ``docker run`` for each node in turn."""
    network = f"{env}_default"
    lines = [f"docker network create --label {PROJECT}={env} {network} >/dev/null"]
    for number in range(1, NODES + 1):
        labels = shlex.join(compose_labels(env=env, layer=LAYER, number=number))
        lines.append(
            f"docker run -d --name {env}-{LAYER}-{number} --network {network} "
            f"--network-alias {LAYER} {labels} {IMAGE} sh -c {shlex.quote(COMMAND)} >/dev/null"
        )
    return "\n".join(lines)


def _report(samples: list[dict[str, float]]) -> dict[str, Any]:
    mid = medians(samples)
    result: dict[str, Any] = {
        "runs": len(samples),
        "nodes": NODES,
        "medians": mid,
        "ratio_of_medians": ratio(mid["clonebot_s"], mid["script_s"]),
        "target_ratio_max": TARGET,
        "samples": samples,
    }
    result["meets_target"] = result["ratio_of_medians"] <= TARGET
    print_table(
        f"stateless: clone {NODES} nodes vs. docker run script (medians of {len(samples)} runs)",
        [
            ("clonebot clone_environment (s)", mid["clonebot_s"], ""),
            ("bash script, docker run x10 (s)", mid["script_s"], ""),
            ("ratio clonebot/script", result["ratio_of_medians"], f"target <= {TARGET}"),
            ("median of per-run ratios", median([s["ratio"] for s in samples]), ""),
        ],
    )
    write_results(NAME, result)
    return result

"""Source environments made with the Docker CLI, labelled as Compose would label them.

An environment ``<env>`` has the network ``<env>_default``, nodes ``<env>_<layer>_<n>`` that
carry their layer's name as DNS alias, and named volumes ``<env>_<short>``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from bench.harness import IMAGE, NO_NETWORK, cli, compose_labels
from services.environments import PROJECT

STATEFUL = ("--label", "clonebot.scaling=stateful")


async def create_network(*, env: str) -> str:
    name = f"{env}_default"
    labels = ("--label", f"{PROJECT}={env}", "--label", "com.docker.compose.network=default")
    await cli("docker", "network", "create", *labels, name)
    return name


async def create_volume(*, env: str, short: str = "data") -> str:
    name = f"{env}_{short}"
    labels = ("--label", f"{PROJECT}={env}", "--label", f"com.docker.compose.volume={short}")
    await cli("docker", "volume", "create", *labels, name)
    return name


async def fill_volume(*, volume: str, files_mib: dict[str, int]) -> None:
    """Write random data into ``volume``: one file per entry (name: size in MiB)."""
    writes = [
        f"dd if=/dev/urandom of=/data/{name} bs=1M count={mib} 2>/dev/null"
        for name, mib in files_mib.items()
    ]
    script = " && ".join([*writes, "sync"])
    await cli(
        "docker", "run", "--rm", *NO_NETWORK, "-v", f"{volume}:/data", IMAGE, "sh", "-c", script
    )


async def run_node(
    *,
    env: str,
    layer: str,
    number: int,
    command: str,
    volume: str | None = None,
    stateful: bool = False,
    labels: Mapping[str, str] | None = None,
    image: str = IMAGE,
) -> str:
    """Start one node of ``env`` running ``sh -c command``; its volume (if any) is at /data.

    ``labels`` are added to the Compose ones (``clonebot.http.port``, ``clonebot.owner``...).
    """
    name = f"{env}_{layer}_{number}"
    args = ["--name", name, "--network", f"{env}_default", "--network-alias", layer]
    args += compose_labels(env=env, layer=layer, number=number)
    args += [*STATEFUL] if stateful else []
    args += [arg for key, value in (labels or {}).items() for arg in ("--label", f"{key}={value}")]
    args += ["-v", f"{volume}:/data"] if volume else []
    await cli("docker", "run", "-d", *args, image, "sh", "-c", command)
    return name


async def run_nodes(*, env: str, layer: str, count: int, command: str) -> list[str]:
    """Start ``count`` stateless nodes of one layer, concurrently."""
    return list(
        await asyncio.gather(
            *(
                run_node(env=env, layer=layer, number=n, command=command)
                for n in range(1, count + 1)
            )
        )
    )


async def ensure_unpaused(container: str) -> None:
    """Resume ``container`` if a failed baseline left it paused."""
    state = await cli("docker", "inspect", "-f", "{{.State.Paused}}", container)
    if state.strip() == "true":
        await cli("docker", "unpause", container)

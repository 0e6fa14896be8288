"""Cloning a live environment on the real Docker engine, checked as a user would."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
from pathlib import Path

import pytest

from services import planning
from services.docker import DockerClient
from services.environments import JOB, get_environment
from services.errors import DockerFailed
from services.lifecycle import clone_environment
from services.planning import plan_clone
from services.progress import BytesCopied, Event, StepDone
from services.settings import Settings
from tests.conftest import MakeSource, exec_output, in_volume, read_volume


async def test_clone_is_a_complete_running_copy(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source()
    events: list[Event] = []
    result = await clone_environment(
        docker, settings, source=source.name, name=f"{source.name}-dev", emit=events.append
    )
    clone = f"{source.name}-dev"

    assert result.state == "succeeded"
    env = await get_environment(docker, clone)
    assert sorted(n.name for n in env.nodes) == [
        f"{clone}-db-1",
        f"{clone}-web-1",
        f"{clone}-web-2",
    ]
    assert all(n.state == "running" for n in env.nodes)
    assert {layer.name: layer.scaling for layer in env.layers} == {
        "db": "stateful",
        "web": "stateless",
    }
    for node in env.nodes:
        assert node.labels["com.docker.compose.project"] == clone
        assert node.labels["com.docker.compose.service"] == node.layer
        assert node.labels["com.docker.compose.container-number"] == str(node.number)
        assert node.labels["com.docker.compose.oneoff"] == "False"
        assert node.labels["clonebot.cloned-from"] == source.name
        assert node.labels[JOB] == result.job

    # the stateful node: named volume, anonymous volume and its own file system, all copied
    db = f"{clone}-db-1"
    assert await exec_output(docker, db, "md5sum < /data/seed") == await exec_output(
        docker, f"{source.name}_db_1", "md5sum < /data/seed"
    )
    assert await exec_output(docker, db, "cat /anon/file /etc/db/db.conf") == "anon\nconf"
    # its volumes are the clone's own, not the source's
    mounts = {m.destination: m.source for m in env.layer("db").master.mounts}
    assert mounts["/data"] == f"{clone}_data"

    # the web nodes serve their page; "db" and "web" resolve inside the clone's network
    page = await exec_output(docker, f"{clone}-web-1", "wget -qO- http://127.0.0.1/")
    assert page == f"{source.name} web 1"
    db_ip = env.layer("db").master.networks[f"{clone}_default"]["IPAddress"]
    ping = await exec_output(docker, f"{clone}-web-2", "ping -c 1 -W 2 db | head -n 1")
    assert f"({db_ip})" in ping

    # environment variables naming the source were rewritten, and reported
    web_env = env.layer("web").master.attrs["Config"]["Env"]
    assert f"DB_URL=postgres://{clone}-db-1:5432/app" in web_env
    assert f"SITE=http://{clone}.clonebot.test/" in web_env
    assert "PLAIN=untouched" in web_env
    reported = {(r.node, r.variable) for r in result.rewrites}
    assert (f"{clone}-web-1", "DB_URL") in reported
    assert (f"{clone}-web-2", "SITE") in reported

    # the published port moved to a free one, and was reported
    [remap] = result.ports
    assert (remap.node, remap.container_port, remap.old) == (db, "5432/tcp", str(source.db_port))
    bound = env.layer("db").master.attrs["NetworkSettings"]["Ports"]["5432/tcp"][0]["HostPort"]
    assert bound == remap.new != str(source.db_port)

    assert result.job not in planning._claimed.values()  # its containers hold the port now

    # the source kept running, unpaused, with its own data
    src = await get_environment(docker, source.name)
    assert all(n.state == "running" for n in src.nodes)
    assert 0 < result.freeze_ms < 5000
    assert any(isinstance(e, BytesCopied) and e.copied >= 64 * 1024 for e in events)
    assert any(isinstance(e, StepDone) and e.step == "freeze" for e in events)


async def test_compose_lists_the_clone_as_a_project(
    docker: DockerClient, settings: Settings, make_source: MakeSource, tmp_path: Path
) -> None:
    """The source's Compose file, run with the clone's project name, sees the clone."""
    source = await make_source(web_nodes=1)
    result = await clone_environment(docker, settings, source=source.name)
    assert result.environment == f"{source.name}-clone1"

    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE)
    listed = await asyncio.to_thread(
        subprocess.run,
        ["docker-compose", "-p", result.environment, "ps"],
        capture_output=True,
        text=True,
        check=True,
        env={"DOCKER_HOST": settings.docker_host, "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    rows = [line.split()[0] for line in listed.stdout.splitlines()[2:]]
    assert rows == [f"{result.environment}-db-1", f"{result.environment}-web-1"]
    assert all(" Up " in line for line in listed.stdout.splitlines()[2:])


COMPOSE_FILE = """
version: "2.4"
services:
  db: {image: clonebot-test/busybox}
  web: {image: clonebot-test/busybox}
"""


async def test_default_names_count_up(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    first = await clone_environment(docker, settings, source=source.name, snapshot=True)
    second = await clone_environment(docker, settings, source=source.name, snapshot=True)
    assert (first.environment, second.environment) == (
        f"{source.name}-clone1",
        f"{source.name}-clone2",
    )


async def test_snapshot_is_created_not_started(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source()
    result = await clone_environment(docker, settings, source=source.name, snapshot=True)
    env = await get_environment(docker, result.environment)
    assert not result.started
    assert {n.state for n in env.nodes} == {"created"}
    seed = await read_volume(docker, f"{result.environment}_data", "seed")
    assert len(seed.encode("utf-8", "surrogateescape")) > 0


async def test_consistent_snapshot_while_the_source_writes(
    docker: DockerClient,
    settings: Settings,
    make_source: MakeSource,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The clone's log is a gap-free prefix of the source's, however the writer raced the copy."""
    source = await make_source(web_nodes=1, seed_kib=8 * 1024)
    await asyncio.sleep(1)  # let the writer get going
    result = await clone_environment(docker, settings, source=source.name, snapshot=True)
    await asyncio.sleep(0.5)

    cloned = _numbers(await read_volume(docker, f"{result.environment}_data", "log"))
    written = _numbers(await read_volume(docker, source.volume, "log"))
    assert len(cloned) > 100
    assert cloned == list(range(1, len(cloned) + 1)), "the clone's log has a gap"
    assert written[: len(cloned)] == cloned
    assert len(written) > len(cloned), "the source kept writing after the clone"

    stall_ms = _longest_stall_ms(await read_volume(docker, source.volume, "log"))
    with capsys.disabled():  # reported on every run, not only on failure
        print(
            f"\n  consistency: freeze {result.freeze_ms} ms, writer's longest stall {stall_ms} ms"
        )
    assert result.freeze_ms < 1000


def _numbers(log: str) -> list[int]:
    return [int(line.split()[0]) for line in log.splitlines() if line.strip()]


def _longest_stall_ms(log: str) -> int:
    times = [float(line.split()[1]) for line in log.splitlines() if len(line.split()) == 2]
    return int(max(b - a for a, b in itertools.pairwise(times)) * 1000)


async def test_source_volume_policies_share_and_empty(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_labels={"clonebot.volume.data": "share"})
    shared = await clone_environment(docker, settings, source=source.name, snapshot=True)
    db = (await get_environment(docker, shared.environment)).layer("db").master
    assert {m.destination: m.source for m in db.mounts}["/data"] == source.volume

    source2 = await make_source(web_nodes=1, db_labels={"clonebot.volume.data": "empty"})
    empty = await clone_environment(docker, settings, source=source2.name, snapshot=True)
    assert await in_volume(docker, f"{empty.environment}_data", "ls -A /v; echo end") == "end\n"
    anon = await in_volume(docker, source2.volume, "ls /v")
    assert "seed" in anon, "the source's data stays where it was"


async def test_every_node_of_a_stateful_layer_is_a_copy_of_its_master(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=2)
    result = await clone_environment(docker, settings, source=source.name)
    env = await get_environment(docker, result.environment)
    first, second = env.layer("db").nodes
    assert (first.name, second.name) == (
        f"{result.environment}-db-1",
        f"{result.environment}-db-2",
    )
    assert {first.state, second.state} == {"running"}
    mounts = [{m.destination: m.source for m in n.mounts} for n in (first, second)]
    assert mounts[0]["/data"] == mounts[1]["/data"] == f"{result.environment}_data"
    assert mounts[0]["/anon"] != mounts[1]["/anon"], "each node has its own anonymous volume"
    # the second node started from the master's snapshot, then went its own way
    assert await exec_output(docker, second.name, "cat /anon/file /etc/db/db.conf") == "anon\nconf"
    await exec_output(docker, second.name, "echo two > /anon/mine")
    assert await exec_output(docker, first.name, "test ! -e /anon/mine && echo apart") == "apart"


async def test_clones_planned_at_once_never_choose_the_same_host_port(
    docker: DockerClient,
    settings: Settings,
    make_source: MakeSource,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ten clones started together once picked one port twice, and one of them failed to start:
    a port stays claimed from its plan until its job ends."""
    source = await make_source(web_nodes=1)
    monkeypatch.setattr(planning, "PORT_RANGE", range(29990, 29992))
    first = await plan_clone(docker, settings, source=source.name, name=f"{source.name}-a")
    second = await plan_clone(docker, settings, source=source.name, name=f"{source.name}-b")
    try:
        assert {first.ports[0].new, second.ports[0].new} == {"29990", "29991"}
        with pytest.raises(DockerFailed, match="no free host port for 5432/tcp"):
            await plan_clone(docker, settings, source=source.name, name=f"{source.name}-c")

        planning.release_ports(first.job)
        third = await plan_clone(docker, settings, source=source.name, name=f"{source.name}-c")
        assert third.ports[0].new == first.ports[0].new
        planning.release_ports(third.job)
    finally:
        planning.release_ports(first.job)
        planning.release_ports(second.job)

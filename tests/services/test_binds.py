"""Host directories (bind mounts) of a source: copied into the clone's own volumes, never
shared unless a label says so, refused by path where they cannot be copied."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.binds import BIND_PATH, BindUnusable
from services.docker import DockerClient
from services.environments import OWNER as OWNER_LABEL
from services.environments import PROJECT, bind_label_path, get_environment
from services.errors import BadRequest, NotEnoughDisk
from services.lifecycle import (
    clone_environment,
    delete_environment,
    refresh_clone,
    rename_environment,
)
from services.settings import Settings
from tests.conftest import (
    IMAGE,
    OWNER,
    TICK_2MS,
    TICKS,
    compose_labels,
    exec_output,
    remove_projects,
)

# every line names the container that wrote it: a clone writing into its source's directory
# would show in the source's log
WRITER = (
    TICKS + "trap 'exit 0' TERM; h=$(hostname); i=$(cat /data/log 2>/dev/null | wc -l); "
    f'while :; do i=$((i+1)); echo "$i $h" >> /data/log; {TICK_2MS}; done'
)
SLEEP = "trap 'exit 0' TERM; while :; do sleep 1; done"  # stops at once

HostDir = Callable[..., Path]


@pytest.fixture
def host_dir() -> Iterator[HostDir]:
    """Factory: a directory on the Docker host (this machine), removed after the test."""
    made: list[Path] = []

    def make(**files: str) -> Path:
        path = Path(f"/var/tmp/clonebot-test-{secrets.token_hex(4)}")
        path.mkdir()
        made.append(path)
        for name, text in files.items():
            (path / name).write_text(text)
        return path

    try:
        yield make
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


# (layer, container labels, mounts, command) for each layer's one node
LayerSpec = tuple[str, dict[str, str], list[dict[str, Any]], str]
MakeEnv = Callable[..., Awaitable[str]]


@pytest.fixture
async def make_env(docker: DockerClient, host_dir: HostDir) -> AsyncIterator[MakeEnv]:
    """Factory: a running Compose-labelled environment of one node per layer; it and every
    project named after it (its clones, its new names) are removed after the test, before
    the host directories (``host_dir`` is torn down after it): a writer still running could
    re-create a file in a directory being removed."""
    made: list[str] = []

    async def make(*layers: LayerSpec) -> str:
        name = f"b{secrets.token_hex(3)}"
        made.append(name)
        for layer, labels, mounts, cmd in layers:
            config = {
                "Image": IMAGE,
                "Cmd": ["sh", "-c", cmd],
                "Labels": {OWNER_LABEL: OWNER, **compose_labels(name, layer, 1), **labels},
                "HostConfig": {"Mounts": mounts, "NetworkMode": "none"},
            }
            cid = await docker.create_container(name=f"{name}_{layer}_1", config=config)
            await docker.start_container(cid)
        return name

    try:
        yield make
    finally:
        projects = set()
        for lister in (docker.list_containers, docker.list_volumes, docker.list_networks):
            for item in await lister(labels=[PROJECT]):
                projects.add((item.get("Labels") or {}).get(PROJECT, ""))
        ours = {p for p in projects if any(p == m or p.startswith(f"{m}-") for m in made)}
        await remove_projects(docker, ours)


def bind(path: Path, target: str, *, read_only: bool = False) -> dict[str, Any]:
    return {"Type": "bind", "Source": str(path), "Target": target, "ReadOnly": read_only}


async def leftovers(docker: DockerClient, name: str) -> list[str]:
    """Whatever of project ``name`` exists on the engine."""
    label = [f"{PROJECT}={name}"]
    found = [c["Names"][0] for c in await docker.list_containers(labels=label)]
    found += [v["Name"] for v in await docker.list_volumes(labels=label)]
    found += [n["Name"] for n in await docker.list_networks(labels=label)]
    return found


@pytest.mark.slow
async def test_a_host_directory_is_copied_into_the_clone_never_shared(
    docker: DockerClient, settings: Settings, make_env: MakeEnv, host_dir: HostDir
) -> None:
    """The usual Compose database (./pgdata:/var/lib/postgresql/data, no clonebot labels):
    the clone runs on its own copy, taken in the freeze, and the source's directory is
    untouched by the clone, its refresh and its delete."""
    data = host_dir(seed=secrets.token_hex(32 * 1024))
    source = await make_env(("db", {}, [bind(data, "/data")], WRITER))
    await asyncio.sleep(1)  # let the writer get going
    clone = f"{source}-dev"

    # not enough room: refused by path, before anything is made
    greedy = settings.model_copy(update={"disk_reserve_bytes": 1 << 60})
    with pytest.raises(NotEnoughDisk) as refused:
        await clone_environment(docker, greedy, source=source, name=clone)
    assert str(data) in refused.value.message
    assert await leftovers(docker, clone) == []

    result = await clone_environment(docker, settings, source=source, name=clone)
    assert not any("shared" in w for w in result.warnings), result.warnings
    env = await get_environment(docker, clone)
    assert env.layer("db").scaling == "stateful"
    [mount] = env.layer("db").master.mounts
    assert (mount.kind, mount.destination) == ("volume", "/data"), "the clone has its own copy"
    volume = await docker.inspect_volume(mount.source)
    assert volume is not None and volume["Labels"][PROJECT] == clone
    assert volume["Labels"][BIND_PATH] == "/data"

    await asyncio.sleep(0.5)  # the clone's writer appends to its copy
    src_host = await exec_output(docker, f"{source}_db_1", "hostname")
    clone_host = await exec_output(docker, f"{clone}-db-1", "hostname")
    cloned = [
        line.split()
        for line in (await exec_output(docker, f"{clone}-db-1", "cat /data/log")).splitlines()
    ]
    written = [line.split() for line in (data / "log").read_text().splitlines()]
    # the source's log holds only its own lines, gap-free: the clone never wrote there
    assert {host for _, host in written} == {src_host}
    assert [int(n) for n, _ in written] == list(range(1, len(written) + 1))
    # the clone's log: the source's lines as of the freeze, then its own, gap-free
    copied = list(itertools.takewhile(lambda line: line[1] == src_host, cloned))
    assert len(copied) > 50 and copied == written[: len(copied)]
    assert {host for _, host in cloned[len(copied) :]} == {clone_host}
    assert [int(n) for n, _ in cloned] == list(range(1, len(cloned) + 1))
    seed = hashlib.md5((data / "seed").read_bytes()).hexdigest()
    assert await exec_output(docker, f"{clone}-db-1", "md5sum < /data/seed") == f"{seed}  -"

    # a write in the clone stays in the clone
    await exec_output(docker, f"{clone}-db-1", "echo mine > /data/from-clone")
    assert not (data / "from-clone").exists()

    # refresh copies the directory again, into the same volume
    (data / "later").write_text("after the clone\n")
    await refresh_clone(docker, settings, name=clone)
    db = (await get_environment(docker, clone)).layer("db").master
    assert [m.source for m in db.mounts] == [mount.source]
    listing = await exec_output(docker, db.name, "cat /data/later; ls /data")
    assert listing.splitlines() == ["after the clone", "later", "log", "seed"]

    # delete removes the clone's copy and leaves the source's directory as it was
    await delete_environment(docker, name=clone)
    assert await leftovers(docker, clone) == []
    assert await docker.inspect_volume(mount.source) is None
    assert sorted(p.name for p in data.iterdir()) == ["later", "log", "seed"]
    assert hashlib.md5((data / "seed").read_bytes()).hexdigest() == seed


@pytest.mark.slow
async def test_share_empty_read_only_and_stateless_binds(
    docker: DockerClient, settings: Settings, make_env: MakeEnv, host_dir: HostDir
) -> None:
    """The labels choose; a read-only directory is shared; a stateless layer's writable
    directory is replaced by an empty volume, with a warning; a rename keeps every bind."""
    shared, scratch, conf, cache = (host_dir(**{name: name}) for name in ("a", "b", "c", "d"))
    app_labels = {"clonebot.bind./shared": "share", "clonebot.bind./scratch/": "empty"}
    app_mounts = [
        bind(shared, "/shared"),
        bind(scratch, "/scratch"),
        bind(conf, "/conf", read_only=True),
    ]
    source = await make_env(
        ("app", app_labels, app_mounts, SLEEP),
        ("cache", {"clonebot.scaling": "stateless"}, [bind(cache, "/cache")], SLEEP),
    )
    layers = (await get_environment(docker, source)).layers
    assert {x.name: x.scaling for x in layers} == {"app": "stateless", "cache": "stateless"}
    result = await clone_environment(docker, settings, source=source, name=f"{source}-dev")
    env = await get_environment(docker, result.environment)
    app = env.layer("app").master
    mounts = {m.destination: m for m in app.mounts}
    assert (mounts["/shared"].kind, mounts["/shared"].source) == ("bind", str(shared))
    assert (mounts["/conf"].kind, mounts["/conf"].source) == ("bind", str(conf))
    assert not mounts["/conf"].read_write
    assert mounts["/scratch"].kind == "volume"
    assert (
        await exec_output(docker, app.name, "cat /conf/c; ls -A /scratch; echo x > /shared/new")
        == "c"
    )
    assert (shared / "new").read_text() == "x\n", "a shared directory is the source's own"
    assert sorted(p.name for p in scratch.iterdir()) == ["b"]

    [cache_mount] = env.layer("cache").master.mounts
    assert cache_mount.kind == "volume"
    assert await exec_output(docker, env.layer("cache").master.name, "ls -A /cache") == ""
    assert any("/cache" in w and "empty volume" in w for w in result.warnings), result.warnings

    # a rename is the same environment: the same host directories, none copied or emptied
    await rename_environment(docker, settings, name=source, new_name=f"{source}-moved")
    moved = await get_environment(docker, f"{source}-moved")
    binds = {m.destination: (m.source, m.read_write) for n in moved.nodes for m in n.binds}
    assert binds == {
        "/shared": (str(shared), True),
        "/scratch": (str(scratch), True),
        "/conf": (str(conf), False),
        "/cache": (str(cache), True),
    }


async def test_a_host_directory_that_cannot_be_copied_is_refused_by_path(
    docker: DockerClient, settings: Settings, make_env: MakeEnv, host_dir: HostDir
) -> None:
    gone = host_dir(seed="x")
    source = await make_env(("db", {}, [bind(gone, "/data")], SLEEP))
    shutil.rmtree(gone)  # the source runs on; a clone has nothing to copy
    with pytest.raises(BindUnusable) as refused:
        await clone_environment(docker, settings, source=source, name=f"{source}-dev")
    assert refused.value.message == (
        f"cannot clone the host directory {gone} (mounted at /data in layer db): "
        "it does not exist on the Docker host"
    )
    assert await leftovers(docker, f"{source}-dev") == []
    assert not gone.exists(), "clonebot never makes a host directory"

    # a writable file (an SQLite database) cannot become a volume: refused, not shared
    folder = host_dir(**{"app.db": "rows"})
    other = await make_env(("db", {}, [bind(folder / "app.db", "/app.db")], SLEEP))
    with pytest.raises(
        BindUnusable, match=r"app\.db .*it is a file.*clonebot\.bind\./app\.db=share"
    ):
        await clone_environment(docker, settings, source=other, name=f"{other}-dev")
    assert await leftovers(docker, f"{other}-dev") == []


async def test_a_host_socket_is_shared_not_copied(
    docker: DockerClient, settings: Settings, make_env: MakeEnv, host_dir: HostDir
) -> None:
    """A socket of the host (docker.sock, mounted read-write) is a door, not data: shared,
    and the layer stays stateless (its source is not frozen, nor committed)."""
    folder = host_dir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "app.sock"))
        source = await make_env(("agent", {}, [bind(folder / "app.sock", "/run/app.sock")], SLEEP))
        result = await clone_environment(docker, settings, source=source, name=f"{source}-dev")
    agent = (await get_environment(docker, result.environment)).layer("agent").master
    [mount] = agent.mounts
    assert (mount.kind, mount.source, mount.read_write) == ("bind", str(folder / "app.sock"), True)
    assert await exec_output(docker, agent.name, "test -S /run/app.sock && echo socket") == "socket"
    origin = (await get_environment(docker, source)).layer("agent").master
    assert (result.freeze_ms, agent.image_id) == (0, origin.image_id)


async def test_bad_bind_labels_are_refused_naming_the_label(
    docker: DockerClient, settings: Settings, make_env: MakeEnv, host_dir: HostDir
) -> None:
    data = host_dir()
    labels = {
        "clonebot.bind./data": "steal",
        "clonebot.bind.data": "copy",
        "clonebot.bind./nowhere": "share",
        "clonebot.bind./data/../etc": "share",
    }
    source = await make_env(("db", labels, [bind(data, "/data")], SLEEP))
    with pytest.raises(BadRequest) as refused:
        await clone_environment(docker, settings, source=source, name=f"{source}-dev")
    message = refused.value.message
    assert (
        "label 'clonebot.bind./data' of layer db: "
        "its value must be copy, share or empty, not 'steal'" in message
    )
    assert (
        "label 'clonebot.bind.data' of layer db: it must name an absolute container path" in message
    )
    assert (
        "label 'clonebot.bind./nowhere' of layer db: layer db mounts no host directory at /nowhere"
        in message
    )
    assert "label 'clonebot.bind./data/../etc'" in message
    assert await leftovers(docker, f"{source}-dev") == []


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("/var/lib/postgresql/data", "/var/lib/postgresql/data"),
        ("/data/", "/data"),
        ("/with space", "/with space"),
        ("data", None),
        ("", None),
        ("/a/../b", None),
        ("/a/./b", None),
        ("/a//b", None),
        ("/a\nb", None),
        ("/a\x00b", None),
        ("/" + "x" * 5000, None),
    ],
)
def test_bind_label_paths(text: str, path: str | None) -> None:
    assert bind_label_path(text) == path


async def test_listing_survives_bad_bind_labels(
    docker: DockerClient, make_env: MakeEnv, host_dir: HostDir
) -> None:
    """Labels are anyone's input: a bad one refuses a clone, never the listing."""
    source = await make_env(
        ("db", {"clonebot.bind./data": "x\ny"}, [bind(host_dir(), "/data")], SLEEP)
    )
    layer = (await get_environment(docker, source)).layer("db")
    assert layer.scaling == "stateful" and layer.bind_policies == {}
    assert layer.label_errors == (
        "label 'clonebot.bind./data' of layer db: "
        "its value must be copy, share or empty, not 'x\\ny'",
    )

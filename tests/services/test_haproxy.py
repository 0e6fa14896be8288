"""The HAProxy adapter against a real HAProxy and real web containers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from services import metrics
from services.docker import DockerClient
from services.traffic.haproxy import (
    Backend,
    EmbeddedHAProxy,
    RouterDown,
    RouterFailed,
    RouterFiles,
    Server,
    apply_map,
    locked,
    render_config,
    write_files,
)
from tests.conftest import IMAGE, WEB


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def web_nodes(docker: DockerClient) -> AsyncIterator[dict[str, str]]:
    """Three busybox web servers answering "A", "B" and "C"; their addresses by name."""
    network = f"hp{secrets.token_hex(3)}"
    await docker.create_network({"Name": network})
    made: list[str] = []
    try:
        addresses = {}
        for page in "ABC":
            cid = await docker.create_container(
                name=f"{network}-{page.lower()}",
                config={
                    "Image": IMAGE,
                    "Cmd": ["sh", "-c", WEB],
                    "Env": [f"PAGE={page}"],
                    "HostConfig": {"NetworkMode": network},
                },
            )
            made.append(cid)
            await docker.start_container(cid)
            info = await docker.inspect_container(cid)
            addresses[page] = info["NetworkSettings"]["Networks"][network]["IPAddress"]
        yield addresses
    finally:
        for cid in made:
            await docker.remove_container(cid)
        await docker.remove_network(network)


@pytest.fixture
async def haproxy(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedHAProxy, str]]:
    assert shutil.which("haproxy"), "HAProxy is not installed (make test installs it)"
    router = EmbeddedHAProxy(files=RouterFiles(tmp_path / "router"))
    try:
        yield router, f"127.0.0.1:{_free_port()}"
    finally:
        await router.stop()


def _backends(ips: dict[str, str], *names: str) -> list[Backend]:
    return [Backend(f"env_{n}", (Server("n1", ips[n.upper()], 80),)) for n in names]


async def _get(session: aiohttp.ClientSession, bind: str, host: str) -> tuple[int, str]:
    async with session.get(f"http://{bind}/", headers={"Host": host}) as resp:
        return resp.status, (await resp.text()).strip()


async def test_hosts_route_to_their_backends(
    haproxy: tuple[EmbeddedHAProxy, str], web_nodes: dict[str, str]
) -> None:
    router, bind = haproxy
    config = render_config(files=router.files, bind=bind, backends=_backends(web_nodes, "a", "b"))
    await router.start(config=config, hosts={"a.test": "env_a", "b.test": "env_b"})
    async with aiohttp.ClientSession() as session:
        assert await _get(session, bind, "a.test") == (200, "A")
        assert await _get(session, bind, "B.TEST:8080") == (200, "B")
        assert await _get(session, bind, "nowhere.test") == (404, "no environment here")


async def _load(bind: str, hosts: list[str], *, stop: asyncio.Event) -> Counter[tuple[int, str]]:
    """Requests one after another until ``stop`` (at most 20 s): every answer counted."""
    seen: Counter[tuple[int, str]] = Counter()
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(20):
            while not stop.is_set():
                for host in hosts:
                    try:
                        seen[await _get(session, bind, host)] += 1
                    except aiohttp.ClientError as exc:
                        seen[(0, type(exc).__name__)] += 1
    return seen


async def test_a_map_swap_is_atomic_and_drops_nothing(
    haproxy: tuple[EmbeddedHAProxy, str], web_nodes: dict[str, str]
) -> None:
    router, bind = haproxy
    config = render_config(files=router.files, bind=bind, backends=_backends(web_nodes, "a", "b"))
    await router.start(config=config, hosts={"a.test": "env_a", "b.test": "env_b"})
    stop = asyncio.Event()
    load = asyncio.create_task(_load(bind, ["a.test", "b.test"], stop=stop))
    straight, swapped = (
        {"a.test": "env_a", "b.test": "env_b"},
        {"a.test": "env_b", "b.test": "env_a"},
    )
    for swap in range(20):
        await router.set_hosts(swapped if swap % 2 == 0 else straight)
        await asyncio.sleep(0.05)
    stop.set()
    seen = await load
    assert set(seen) <= {(200, "A"), (200, "B")}, seen
    assert sum(seen.values()) >= 40
    # 20 swaps: back where it started, and the file says so too, for a restart
    assert await router.api.show_map(router.files.hosts) == straight
    assert router.files.hosts.read_text() == "a.test env_a\nb.test env_b\n"


async def test_a_reload_adds_a_backend_without_dropping_a_request(
    haproxy: tuple[EmbeddedHAProxy, str], web_nodes: dict[str, str]
) -> None:
    router, bind = haproxy
    two = render_config(files=router.files, bind=bind, backends=_backends(web_nodes, "a", "b"))
    await router.start(config=two, hosts={"a.test": "env_a"})
    stop = asyncio.Event()
    load = asyncio.create_task(_load(bind, ["a.test"], stop=stop))
    await asyncio.sleep(0.3)
    three = render_config(
        files=router.files, bind=bind, backends=_backends(web_nodes, "a", "b", "c")
    )
    reloads = _route_changes("reload")
    reloaded = await router.apply(config=three, hosts={"a.test": "env_a", "c.test": "env_c"})
    await asyncio.sleep(0.3)
    stop.set()
    assert reloaded
    assert _route_changes("reload") == reloads + 1  # measured as what it was
    assert set(await load) == {(200, "A")}
    async with aiohttp.ClientSession() as session:
        assert await _get(session, bind, "c.test") == (200, "C")


async def test_weights_move_traffic(
    haproxy: tuple[EmbeddedHAProxy, str], web_nodes: dict[str, str]
) -> None:
    router, bind = haproxy
    split = Backend(
        "route_1",
        (Server("a", web_nodes["A"], 80, weight=100), Server("b", web_nodes["B"], 80, weight=0)),
    )
    config = render_config(files=router.files, bind=bind, backends=[split])
    await router.start(config=config, hosts={"shop.test": "route_1"})
    async with aiohttp.ClientSession() as session:
        assert {await _get(session, bind, "shop.test") for _ in range(20)} == {(200, "A")}
        await router.api.set_weight(backend="route_1", server="a", weight=0)
        await router.api.set_weight(backend="route_1", server="b", weight=100)
        assert {await _get(session, bind, "shop.test") for _ in range(20)} == {(200, "B")}


async def test_a_refused_configuration_changes_nothing(
    haproxy: tuple[EmbeddedHAProxy, str], web_nodes: dict[str, str]
) -> None:
    router, bind = haproxy
    good = render_config(files=router.files, bind=bind, backends=_backends(web_nodes, "a"))
    await router.start(config=good, hosts={"a.test": "env_a"})
    with pytest.raises(RouterFailed, match=r"HAProxy refused the configuration: .*nonsense"):
        await router.apply(config=good + "backend broken\n    nonsense here\n", hosts={})
    assert router.files.config.read_text() == good
    assert router.files.hosts.read_text() == "a.test env_a\n"
    async with aiohttp.ClientSession() as session:
        assert await _get(session, bind, "a.test") == (200, "A")


async def test_a_restart_comes_back_with_every_route(
    haproxy: tuple[EmbeddedHAProxy, str], web_nodes: dict[str, str]
) -> None:
    router, bind = haproxy
    config = render_config(files=router.files, bind=bind, backends=_backends(web_nodes, "a", "b"))
    await router.start(config=config, hosts={"a.test": "env_a", "b.test": "env_b"})
    await router.set_hosts({"a.test": "env_b", "b.test": "env_a"})
    await router.stop()

    again = EmbeddedHAProxy(files=router.files)
    hosts = dict(line.split() for line in router.files.hosts.read_text().splitlines())
    try:
        await again.start(config=router.files.config.read_text(), hosts=hosts)
        async with aiohttp.ClientSession() as session:
            assert await _get(session, bind, "a.test") == (200, "B")
            assert await _get(session, bind, "b.test") == (200, "A")
    finally:
        await again.stop()


async def test_weights_and_hosts_change_without_a_reload(
    haproxy: tuple[EmbeddedHAProxy, str], web_nodes: dict[str, str]
) -> None:
    router, bind = haproxy

    def split(a: int, b: int) -> str:
        servers = (
            Server("a", web_nodes["A"], 80, weight=a),
            Server("b", web_nodes["B"], 80, weight=b),
        )
        return render_config(files=router.files, bind=bind, backends=[Backend("route_1", servers)])

    await router.start(config=split(100, 0), hosts={"shop.test": "route_1"})
    worker = await router.api.command("show info")
    changes = _route_changes("runtime"), _route_changes("reload")
    assert not await router.apply(
        config=split(0, 100), hosts={"shop.test": "route_1", "x.test": "route_1"}
    )
    assert (_route_changes("runtime"), _route_changes("reload")) == (changes[0] + 1, changes[1])
    assert _pid(worker) == _pid(await router.api.command("show info")), "the same worker"
    async with aiohttp.ClientSession() as session:
        assert {await _get(session, bind, "x.test") for _ in range(10)} == {(200, "B")}
    assert router.files.config.read_text() == split(0, 100), "the file follows, for a restart"


def _route_changes(how: str) -> float:
    """How many route changes of this kind ``/metrics`` counts so far."""
    count = metrics.REGISTRY.get_sample_value("clonebot_route_change_seconds_count", {"how": how})
    return count or 0.0


def _pid(info: str) -> str:
    return next(line for line in info.splitlines() if line.startswith("Pid:"))


async def test_writers_side_by_side_each_check_their_own_configuration(
    tmp_path: Path, web_nodes: dict[str, str]
) -> None:
    """`clonebot serve` and a command beside it write the same files at the same moment."""
    files = RouterFiles(tmp_path / "router")
    bind = f"127.0.0.1:{_free_port()}"
    configs = [
        render_config(files=files, bind=bind, backends=_backends(web_nodes, *names))
        for names in (["a"], ["a", "b"], ["b", "c"], ["a", "b", "c"])
    ] * 3
    order: list[str] = []

    async def write(config: str) -> None:
        async with locked(files):
            await write_files(files, config=config, hosts={"a.test": "env_a"})
            order.append(config)

    await asyncio.gather(*(write(config) for config in configs))
    assert files.config.read_text() == order[-1], "the last writer's configuration stands"
    assert sorted(p.name for p in files.directory.iterdir()) == [
        "haproxy.cfg", "hosts.map", "router.lock",
    ], "no candidate file is left behind"  # fmt: skip


async def test_a_map_change_haproxy_did_not_take_leaves_the_file_as_haproxy_has_it(
    tmp_path: Path,
) -> None:
    """A master that answers while its runtime API does not (a reload between two workers,
    and the new one not up in time): the change fails, and the map's file keeps what HAProxy
    serves, so that the next apply, comparing with the file, still sends the change."""
    files = RouterFiles(tmp_path / "router")
    files.directory.mkdir()
    files.hosts.write_text("shop.test env_blue\n")

    async def master(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"#<PID> <type> ...\n1 master 0 0 0d00h00m01s 2.6\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(master, path=str(files.master))
    try:
        with pytest.raises(RouterDown):
            await apply_map(
                files, hosts={"shop.test": "env_green"}, current={"shop.test": "env_blue"}
            )
    finally:
        server.close()
        await server.wait_closed()
    assert files.hosts.read_text() == "shop.test env_blue\n"
    files.master.unlink()
    # none runs at all: the file is what an HAProxy started will read
    assert not await apply_map(
        files, hosts={"shop.test": "env_green"}, current={"shop.test": "env_blue"}
    )
    assert files.hosts.read_text() == "shop.test env_green\n"

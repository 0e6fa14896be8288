"""A Docker Swarm stack as an environment (services/swarm.py): listed, cloned, routed,
swapped, slept, woken and deleted.

Three hosts of their own (tests/fleet/hosts.py) joined in a Swarm, all three managers (each
lists every stack: clonebot sees each once); all three added to clonebot (host 3 over SSH).
The stack: a web service (two replicas, host-mode port, dnsrr: this kernel has no IPVS) and a
database pinned to host 2, writing to its volume without pause.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import Iterator

import aiohttp
import pytest

from services.context import open_services
from services.settings import Settings
from services.traffic.haproxy import EmbeddedHAProxy, RouterFiles, render_config
from services.traffic.router import apply_routes, router_state
from tests.cli import clonebot
from tests.conftest import ADMIN, IMAGE, OWNER, WRITER
from tests.fleet.hosts import Fleet as Hosts
from tests.fleet.hosts import Host, wait_for

pytestmark = [pytest.mark.alone, pytest.mark.own_engines]

WEB = 'mkdir -p /www && echo "page from $NODE" > /www/index.html && exec httpd -f -p 8080 -h /www'


def _stack(port: int) -> str:
    return f"""
version: "3.8"
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", {WEB.replace("$", "$$")!r}]
    environment: {{NODE: "{{{{.Node.Hostname}}}}"}}
    networks: [net]
    ports: [{{target: 8080, published: {port}, mode: host}}]
    deploy:
      endpoint_mode: dnsrr
      replicas: 2
      labels: {{clonebot.owner: {OWNER}, clonebot.http.port: "8080"}}
      placement: {{max_replicas_per_node: 1, constraints: ["node.hostname != cbh1"]}}
  db:
    image: {IMAGE}
    command: ["sh", "-c", {WRITER.replace("$", "$$")!r}]
    volumes: [data:/data]
    networks: [net]
    deploy:
      endpoint_mode: dnsrr
      labels: {{clonebot.owner: {OWNER}}}
      placement: {{constraints: ["node.hostname == cbh2"]}}
networks:
  net: {{driver: overlay, attachable: true}}
volumes:
  data: {{}}
"""


@pytest.fixture(scope="module")
def swarm_hosts(root_before: dict[str, set[str]]) -> Iterator[Hosts]:
    """Three managers: each lists every stack, which clonebot must see once."""
    with Hosts() as fleet:
        fleet.join_swarm(managers=True)
        yield fleet


def _replicas(manager: Host, stack: str) -> dict[str, str]:
    out = manager.docker(
        "service", "ls", "--filter", f"label=com.docker.stack.namespace={stack}",
        "--format", "{{.Name}} {{.Replicas}}",
    )  # fmt: skip
    # "2/2 (max 1 per node)": the counts only
    return {line.split()[0]: line.split()[1] for line in out.splitlines()}


def _page(address: str, port: int) -> str:
    with socket.create_connection((address, port), timeout=3) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b"".join(iter(lambda: conn.recv(4096), b""))
    return reply.partition(b"\r\n\r\n")[2].decode()


async def _routed(settings: Settings, host: str) -> set[str]:
    """The pages HAProxy on this host serves for ``host`` (20 requests), as routed now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        bind = f"127.0.0.1:{sock.getsockname()[1]}"
    assert settings.router_dir is not None
    files = RouterFiles(settings.router_dir)
    async with open_services(settings) as svc:
        state = await router_state(svc)
        haproxy = EmbeddedHAProxy(files=files)
        config = render_config(files=files, bind=bind, backends=state.backends)
        await haproxy.start(config=config, hosts=state.hosts)
        try:
            assert await apply_routes(svc, files=files, bind=bind)
            await asyncio.sleep(0.3)
            pages = set()
            async with aiohttp.ClientSession() as session:
                for _ in range(20):
                    headers = {"Host": host, "Connection": "close"}
                    async with session.get(f"http://{bind}/", headers=headers) as resp:
                        assert resp.status == 200, (host, resp.status)
                        pages.add(await resp.text())
            return pages
        finally:
            await haproxy.stop()


def _numbers(log: str) -> list[int]:
    return [int(line.split()[0]) for line in log.splitlines() if line.strip()]


def _volume_file(host: Host, volume: str, path: str) -> str:
    return host.docker("run", "--rm", "-v", f"{volume}:/v:ro", IMAGE, "cat", f"/v/{path}")


async def test_a_stack_is_listed_cloned_with_its_pinned_data_and_deleted(
    swarm_hosts: Hosts, settings: Settings
) -> None:
    manager, west, south = swarm_hosts.hosts
    for host, name in ((manager, "east"), (west, "west")):
        args = ["engine", "add", name, host.tcp_url, "--tls-dir", str(host.tls_dir)]
        assert clonebot(*args, "--as", ADMIN, settings=settings).returncode == 0
    args = ["engine", "add", "south", south.ssh_url, "--ssh-dir", str(south.ssh_dir)]
    assert clonebot(*args, "--as", ADMIN, settings=settings).returncode == 0

    stack = f"fs{secrets.token_hex(3)}"
    (swarm_hosts.work / "stack.yml").write_text(_stack(18080))
    manager.docker("stack", "deploy", "--resolve-image", "never", "-c",
                   str(swarm_hosts.work / "stack.yml"), stack)  # fmt: skip
    want = {f"{stack}_web": "2/2", f"{stack}_db": "1/1"}
    wait_for(lambda: _replicas(manager, stack) == want, what="the stack running", seconds=60)
    await asyncio.sleep(1)  # the writer gets going

    listed = {
        e["name"]: e for e in json.loads(clonebot("envs", "--json", settings=settings).stdout)
    }
    assert (listed[stack]["engine"], listed[stack]["kind"], listed[stack]["state"]) == (
        "east", "stack", "up",
    )  # fmt: skip
    assert listed[stack]["owner"] == OWNER
    layers = {layer["name"]: layer for layer in listed[stack]["layers"]}
    assert (layers["db"]["scaling"], layers["web"]["scaling"]) == ("stateful", "stateless")
    assert [n["state"] for n in layers["web"]["nodes"]] == ["running", "running"]

    clone = f"{stack}-c"
    made = clonebot("clone", stack, clone, "--as", OWNER, settings=settings)
    assert made.returncode == 0, made.stdout + made.stderr
    assert f"port {clone}_web 8080/tcp: host 18080 -> " in made.stdout, made.stdout
    want = {f"{clone}_web": "2/2", f"{clone}_db": "1/1"}
    assert _replicas(manager, clone) == want
    # the source ran on, and runs: its writer was paused a moment only
    assert _replicas(manager, stack) == {f"{stack}_web": "2/2", f"{stack}_db": "1/1"}
    # the database's copy: on host 2 (pinned where its data was copied), one instant of the
    # source's log
    where = manager.docker("service", "ps", "--format", "{{.Node}}", f"{clone}_db").split()
    assert where[0] == "cbh2", where
    cloned = _numbers(_volume_file(west, f"{clone}_data", "log"))
    written = _numbers(_volume_file(west, f"{stack}_data", "log"))
    assert cloned and cloned == written[: len(cloned)], "not a prefix of the source's log"
    assert cloned == list(range(1, len(cloned) + 1)), "a gap in the clone's log"
    # its web service on a port of its own, on the same hosts
    port = next(
        int(line.rsplit(" ", 1)[1])
        for line in made.stdout.splitlines()
        if f"{clone}_web 8080/tcp" in line
    )
    assert port != 18080
    pages = {_page(h.address, port) for h in (west, south)}
    assert pages == {"page from cbh2\n", "page from cbh3\n"}
    # and through the router, at its domain: HAProxy here reaches the tasks' hosts
    assert await _routed(settings, f"{clone}.clonebot.test") == pages
    # the clone's pages told apart from the source's, a domain of the source swapped to it
    for host in (west, south):
        task = host.docker("ps", "-q", "--filter", f"name={clone}_web").split()[0]
        host.docker("exec", task, "sh", "-c", "echo clone > /www/index.html")
    added = clonebot("domain", "add", stack, "shop.test", "--as", OWNER, settings=settings)
    assert added.returncode == 0, added.stderr
    assert await _routed(settings, "shop.test") == pages
    swapped = clonebot("swap", stack, clone, "--as", OWNER, settings=settings)
    assert swapped.returncode == 0, swapped.stderr
    assert await _routed(settings, "shop.test") == {"clone\n"}
    assert clonebot("swap", clone, stack, "--as", OWNER, settings=settings).returncode == 0
    removed = clonebot("domain", "remove", stack, "shop.test", "--as", OWNER, settings=settings)
    assert removed.returncode == 0, removed.stderr

    envs = {e["name"]: e for e in json.loads(clonebot("envs", "--json", settings=settings).stdout)}
    assert (envs[clone]["kind"], envs[clone]["cloned_from"]) == ("stack", stack)
    # asleep: scaled to no task, its volume kept; awake: as it was, its data there
    asleep = clonebot("sleep", clone, "--as", OWNER, settings=settings)
    assert asleep.returncode == 0, asleep.stdout + asleep.stderr
    assert _replicas(manager, clone) == {f"{clone}_web": "0/0", f"{clone}_db": "0/0"}
    awake = clonebot("wake", clone, "--as", OWNER, settings=settings)
    assert awake.returncode == 0, awake.stdout + awake.stderr
    assert _replicas(manager, clone) == {f"{clone}_web": "2/2", f"{clone}_db": "1/1"}
    assert _numbers(_volume_file(west, f"{clone}_data", "log"))[: len(cloned)] == cloned
    # refreshed: the database's data copied anew from the source, onto a volume of its own;
    # the old one gone
    refreshed = clonebot("refresh", clone, "--as", OWNER, settings=settings)
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    assert _replicas(manager, clone) == {f"{clone}_web": "2/2", f"{clone}_db": "1/1"}
    volumes = west.docker("volume", "ls", "-q", "--filter", f"name={clone}_").split()
    assert len(volumes) == 1 and volumes[0].startswith(f"{clone}_data-r"), volumes
    again = _numbers(_volume_file(west, volumes[0], "log"))
    written = _numbers(_volume_file(west, f"{stack}_data", "log"))
    assert len(again) > len(cloned) and again == written[: len(again)], "not the source's now"
    renamed = clonebot("rename", clone, f"{clone}x", "--as", OWNER, settings=settings)
    assert renamed.returncode == 2, renamed.stdout + renamed.stderr
    assert f"{clone} is a Swarm stack: rename is not built for stacks yet" in renamed.stderr

    deleted = clonebot("delete", clone, "--as", OWNER, settings=settings)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert _replicas(manager, clone) == {}
    assert manager.docker("network", "ls", "-q", "--filter", f"name={clone}_").strip() == ""
    assert west.docker("volume", "ls", "-q", "--filter", f"name={clone}_").strip() == ""
    assert _replicas(manager, stack) == {f"{stack}_web": "2/2", f"{stack}_db": "1/1"}
    manager.docker("stack", "rm", stack)


UNPINNED = f"""
version: "3.8"
services:
  db:
    image: {IMAGE}
    command: ["sleep", "3600"]
    volumes: [data:/data]
    deploy:
      labels: {{clonebot.owner: {OWNER}}}
volumes:
  data: {{}}
"""


async def test_a_stack_whose_data_is_on_no_known_node_is_refused_and_nothing_made(
    swarm_hosts: Hosts, settings: Settings
) -> None:
    """A stateful service with no node.hostname constraint: its data is wherever it last ran,
    the clone is refused naming it; a stack is not cloned --on another engine."""
    manager = swarm_hosts.hosts[0]
    args = ["engine", "add", "east", manager.tcp_url, "--tls-dir", str(manager.tls_dir)]
    assert clonebot(*args, "--as", ADMIN, settings=settings).returncode == 0
    stack = f"fu{secrets.token_hex(3)}"
    (swarm_hosts.work / "unpinned.yml").write_text(UNPINNED)
    manager.docker("stack", "deploy", "--resolve-image", "never", "-c",
                   str(swarm_hosts.work / "unpinned.yml"), stack)  # fmt: skip
    try:
        refused = clonebot("clone", stack, f"{stack}-c", "--as", OWNER, settings=settings)
        assert refused.returncode != 0
        said = " ".join(refused.stderr.split())
        assert f"service {stack}_db has a volume but no node.hostname== placement" in said, said
        assert _replicas(manager, f"{stack}-c") == {}
        assert manager.docker("network", "ls", "-q", "--filter", f"name={stack}-c").strip() == ""
        on = clonebot("clone", stack, "--on", "local", "--as", OWNER, settings=settings)
        assert on.returncode == 2 and "it is cloned on its own Swarm, not --on" in on.stderr
    finally:
        manager.docker("stack", "rm", stack)

"""The fleet harness itself: three engines in namespaces of their own, reached from the root
namespace over TLS and on published ports, cut off by a partition, joined in a Swarm that runs
a stack across them; then nothing left behind."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fleet.hosts import IMAGES, Fleet, Host, cli_env, fleet_pids, root_state, run

# engines of its own, and it watches the whole machine's links, mounts and iptables
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.alone, pytest.mark.own_engines]

BUSYBOX = IMAGES[0]
WEB = 'mkdir -p /www && echo "page from $NODE" > /www/index.html && exec httpd -f -p 8080 -h /www'
# dnsrr and host-mode ports: this kernel has no IPVS, so no VIP and no routing mesh
STACK = f"""
version: "3.8"
services:
  web:
    image: {BUSYBOX}
    command: ["sh", "-c", {WEB.replace("$", "$$")!r}]
    environment: {{NODE: "{{{{.Node.Hostname}}}}"}}
    networks: [net]
    ports: [{{target: 8080, published: 8080, mode: host}}]
    deploy:
      endpoint_mode: dnsrr
      replicas: 2
      placement: {{max_replicas_per_node: 1, constraints: ["node.hostname != cbh1"]}}
  client:
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    networks: [net]
    deploy:
      endpoint_mode: dnsrr
      placement: {{constraints: ["node.hostname == cbh1"]}}
networks:
  net: {{driver: overlay, attachable: true}}
"""


def page(address: str, port: int, *, timeout: float = 3) -> str:
    """The body of GET / from the root namespace."""
    with socket.create_connection((address, port), timeout=timeout) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b"".join(iter(lambda: conn.recv(4096), b""))
    return reply.partition(b"\r\n\r\n")[2].decode()


def wait_until(
    check: Callable[[], bool], *, seconds: float, why: Callable[[], str] = lambda: ""
) -> None:
    """Until ``check`` is true; else what ``why`` tells at the end."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not so after {seconds} s: {why()}"
        time.sleep(0.3)


def test_engines_answer_over_tls_and_leave_root_alone(
    fleet_hosts: Fleet, root_before: dict[str, set[str]]
) -> None:
    for host in fleet_hosts.hosts:
        env = cli_env(fleet_hosts.work) | host.tls_env()
        assert run("docker", "info", "--format", "{{.Name}}", env=env).strip() == host.hostname
        images = host.docker("images", "--format", "{{.Repository}}:{{.Tag}}").split()
        assert set(IMAGES) <= set(images)
    now = root_state()
    # no docker0 or other bridge, no rule: only the root's end of the switch
    new_links = {link.split()[0].split("@")[0] for link in now["links"] - root_before["links"]}
    assert new_links == {fleet_hosts.root_link}
    assert now["iptables"] == root_before["iptables"]


def test_published_port_reached_from_root(fleet_hosts: Fleet) -> None:
    host = fleet_hosts.hosts[1]
    name = "web-direct"
    host.docker("run", "-d", "--name", name, "-e", "NODE=direct", "-p", "8081:8080",
                BUSYBOX, "sh", "-c", WEB)  # fmt: skip
    try:
        wait_until(lambda: _answers(host.address, 8081), seconds=10)
        assert page(host.address, 8081) == "page from direct\n"
    finally:
        host.docker("rm", "-f", name)


def test_partition_cuts_a_host_off(fleet_hosts: Fleet) -> None:
    host = fleet_hosts.hosts[2]
    host.link_down()
    try:
        assert not _answers(host.address, 2376, timeout=1)
    finally:
        host.link_up()
    assert _answers(host.address, 2376)


def test_stack_across_hosts_in_swarm(fleet_hosts: Fleet) -> None:
    fleet_hosts.join_swarm()
    manager = fleet_hosts.hosts[0]
    (fleet_hosts.work / "stack.yml").write_text(STACK)
    manager.docker("stack", "deploy", "--resolve-image", "never", "-c",
                   str(fleet_hosts.work / "stack.yml"), "st")  # fmt: skip
    wait_until(
        lambda: _replicas(manager) == {"st_client": "1/1", "st_web": "2/2"},
        seconds=30,
        why=lambda: manager.docker("service", "ps", "--no-trunc", "st_web", "st_client"),
    )
    client = manager.docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=st_client")
    found = manager.docker("exec", client.strip(), "nslookup", "tasks.web")
    assert len(re.findall(r"Name:\s+tasks\.web\s+Address:", found)) == 2, found
    # over the overlay from host 1; dnsrr answers in turn, so both tasks within a few tries
    assert _pages(manager, client.strip(), "http://web:8080/") == {
        "page from cbh2\n",
        "page from cbh3\n",
    }
    for host in fleet_hosts.hosts[1:]:  # host-mode ports, from the root namespace
        assert page(host.address, 8080) == f"page from {host.hostname}\n"
    # a container of its own on a worker joins the attachable overlay
    one_off = ["run", "--rm", "--network", "st_net", BUSYBOX, "timeout", "5", "wget", "-qO-"]
    assert fleet_hosts.hosts[2].docker(*one_off, "http://web:8080/").startswith("page from")


def test_stop_leaves_root_as_found(fleet_hosts: Fleet, root_before: dict[str, set[str]]) -> None:
    pids = [h.pid for h in fleet_hosts.hosts]
    ids = {i for h in fleet_hosts.hosts for i in h.docker("ps", "-aq", "--no-trunc").split()}
    assert ids  # the Swarm's tasks: their processes must go with their engines
    fleet_hosts.stop()
    fleet_hosts.stop()  # again: nothing left to do
    after = root_state()
    for key, before in root_before.items():
        assert (after[key] - before, before - after[key]) == (set(), set()), key
    assert fleet_pids(fleet_hosts) == []  # dockerd, containerd, shims, docker-proxy
    assert not [pid for pid in pids if pid is None or _alive(pid)]
    assert not _in_cgroups(ids)


def _answers(address: str, port: int, *, timeout: float = 3) -> bool:
    try:
        socket.create_connection((address, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _pages(host: Host, container: str, url: str, *, tries: int = 20) -> set[str]:
    """The pages ``container`` got from ``url``, until two differ."""
    seen: set[str] = set()
    for _ in range(tries):
        # busybox 1.35's wget -T crashes: timeout(1) bounds it instead
        seen.add(host.docker("exec", container, "timeout", "5", "wget", "-q", "-O-", url))
        if len(seen) == 2:
            break
    return seen


def _replicas(host: Host) -> dict[str, str]:
    lines = host.docker("service", "ls", "--format", "{{.Name}} {{.Replicas}}").splitlines()
    return {name: count for name, count, *_ in (line.split() for line in lines)}


def _in_cgroups(ids: set[str]) -> list[int]:
    """Live processes in the cgroups of these containers."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if any(i in (proc / "cgroup").read_text() for i in ids) and _alive(int(proc.name)):
                found.append(int(proc.name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False

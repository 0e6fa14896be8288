"""What the Docker engine's host has room for: network addresses, host ports, disk.

clonebot may run elsewhere than its engine (in a container, or talking to a remote engine),
so none of this is read from clonebot's own host: the engine says what its networks hold,
and the helper image, run on the engine's host, reads its ports and its disk.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from services.docker import JSON, DockerClient
from services.volumes import run_helper

# Docker's address pools when its daemon.json sets none (libnetwork's defaults): 15 networks
# of /16 in 172.17-31, and 16 of /20 in 192.168.0.0/16. The first is the default bridge's.
DOCKER_DEFAULT_POOLS = (
    *((f"172.{n}.0.0/16", 16) for n in range(17, 32)),
    ("192.168.0.0/16", 20),
)
POOL_FIX = (
    'give the engine more networks: in its daemon.json, "default-address-pools": '
    '[{"base": "10.200.0.0/16", "size": 24}] (256 networks), then restart it'
)
# /proc/net files on the engine's host: every socket's local port, listening or not
_PORT_FILES = "/proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class NetworkRoom:
    free: int  # bridge networks the engine can still make from its pools
    total: int  # all its pools can hold


async def network_room(docker: DockerClient) -> NetworkRoom:
    """How many more bridge networks the engine can make without a subnet of their own."""
    info = await docker.info()
    pools = [(p["Base"], int(p["Size"])) for p in info.get("DefaultAddressPools") or []]
    networks = await docker.list_networks(labels=[])
    return count_room(pools or list(DOCKER_DEFAULT_POOLS), _subnets(networks))


def count_room(pools: list[tuple[str, int]], used: list[Network]) -> NetworkRoom:
    """Subnets of each pool that no existing network overlaps, as Docker allocates them."""
    free = total = 0
    for base, size in pools:
        pool = ipaddress.ip_network(base, strict=False)
        count = 1 << max(size - pool.prefixlen, 0)
        taken: set[int] = set()
        for net in used:
            if net.version != pool.version or not net.overlaps(pool):
                continue
            if net.prefixlen <= pool.prefixlen:  # covers the whole pool
                taken.update(range(count))
                break
            first = (int(net.network_address) - int(pool.network_address)) >> (
                pool.max_prefixlen - size
            )
            taken.update(range(first, first + (1 << max(size - net.prefixlen, 0))))
        total += count
        free += count - len(taken)
    return NetworkRoom(free=free, total=total)


def _subnets(networks: list[JSON]) -> list[Network]:
    found: list[Network] = []
    for net in networks:
        for config in (net.get("IPAM") or {}).get("Config") or []:
            try:
                found.append(ipaddress.ip_network(config.get("Subnet", ""), strict=False))
            except ValueError:  # no subnet (a host or none network), or not an address
                continue
    return found


async def ports_in_use(docker: DockerClient, *, image: str, labels: dict[str, str]) -> set[int]:
    """The host ports the engine's host uses now, and those its containers will use (a stopped
    container's published ports are taken again when it starts)."""
    script = f"cat {_PORT_FILES} 2>/dev/null"
    listing = await run_helper(docker, image=image, script=script, labels=labels, network="host")
    ports = parse_proc_net(listing)
    for container in await docker.list_containers():
        # a running one's ports may be forwarded without a listening proxy (no userland-proxy)
        ports.update(p["PublicPort"] for p in container.get("Ports") or [] if "PublicPort" in p)
        if container.get("State") == "running":
            continue
        found = await docker.find_container(container["Id"])  # gone meanwhile: None
        bindings = (found or {}).get("HostConfig", {}).get("PortBindings") or {}
        for binds in bindings.values():
            ports.update(int(b["HostPort"]) for b in binds or [] if b.get("HostPort"))
    return ports


def parse_proc_net(listing: str) -> set[int]:
    """Local ports in ``/proc/net/{tcp,udp}[6]`` (``  0: 0100007F:1F90 …``)."""
    ports: set[int] = set()
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[0].endswith(":") and ":" in fields[1]:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def free_disk(docker: DockerClient, *, image: str) -> int:
    """Bytes free on the file system of the engine's data root (where volumes live too)."""
    out = await run_helper(docker, image=image, script="df -Pk / | tail -n 1", labels={})
    return int(out.split()[3]) * 1024

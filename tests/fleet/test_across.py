"""A clone made on another engine than its source's (``clone --on``): its images carried, its
data relayed between the engines' helpers while the source runs and during its short freeze,
and nothing of the copy left on the source's engine, whether it succeeds or is refused.

The engines are hosts of their own (tests/fleet/hosts.py), reached over TCP with TLS.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from services.access import Request
from services.context import Services, open_services
from services.docker import DockerClient
from services.environments import JOB
from services.fleet import EngineSpec
from services.settings import Settings
from services.traffic.haproxy import EmbeddedHAProxy, RouterFiles, render_config
from services.traffic.router import apply_routes, router_state, web_nodes
from services.traffic.routing import add_domain, set_split, swap_domains
from tests.cli import clonebot, clonebot_env, run_cli
from tests.conftest import (
    ADMIN,
    IMAGE,
    OWNER,
    MakeSource,
    create_source,
    exec_output,
    read_volume,
    remove_projects,
)
from tests.fleet.hosts import Fleet as Hosts

pytestmark = [pytest.mark.alone, pytest.mark.own_engines]


@pytest.fixture(scope="module")
def fleet_hosts(root_before: dict[str, set[str]]) -> Iterator[Hosts]:
    """The fleet of tests/fleet/conftest.py, but host 3 is short of disk: its engine's data
    is on a 300 MB tmpfs."""
    with Hosts(small_disk={3: "300m"}) as fleet:
        yield fleet


@dataclass
class Pair:
    east: DockerClient  # host 1: the source's engine
    west: DockerClient  # host 2: the clone's


@pytest.fixture
async def pair(fleet_hosts: Hosts, settings: Settings) -> AsyncIterator[Pair]:
    """Clients of hosts 1 and 2, both added to clonebot; what a test made there goes after."""
    clients = []
    for host, name in zip(fleet_hosts.hosts[:2], ("east", "west"), strict=True):
        args = ["engine", "add", name, host.tcp_url, "--tls-dir", str(host.tls_dir)]
        added = clonebot(*args, "--as", ADMIN, settings=settings)
        assert added.returncode == 0, added.stderr
        clients.append(EngineSpec(name, host.tcp_url, host.tls_dir).connect())
    yield Pair(*clients)
    for docker in clients:
        projects = {
            (c.get("Labels") or {}).get("com.docker.compose.project", "")
            for c in await docker.list_containers(labels=["com.docker.compose.project"])
        }
        await remove_projects(docker, {p for p in projects if p.startswith("f")})
        for image in await docker.list_images(labels=["clonebot.test=across"]):
            await docker.remove_image(image["Id"])
        await docker.close()


async def _image_only_on(docker: DockerClient, tag: str) -> str:
    """An image made on this engine alone (the others have the test image, not this one)."""
    config = {"Image": IMAGE, "Cmd": ["sh", "-c", f"echo {tag} > /made-on-east"]}
    cid = await docker.create_container(name=f"fimg{tag}", config=config)
    try:
        await docker.start_container(cid)
        assert await docker.wait_container(cid) == 0
        return await docker.commit_container(
            cid, repo=f"clonebot-test/web-{tag}", tag="latest", labels={"clonebot.test": "across"}
        )
    finally:
        await docker.remove_container(cid)


def _numbers(log: str) -> list[int]:
    return [int(line.split()[0]) for line in log.splitlines() if line.strip()]


async def test_a_clone_on_another_engine_is_a_consistent_running_copy_and_east_keeps_nothing(
    pair: Pair, settings: Settings
) -> None:
    """``clone --on west`` of an environment on east: the web image, which west lacked, is
    carried; the database's volume is a gap-free prefix of what its writer kept writing; its
    own files (a commit) and its second node come along; east keeps no helper, commit or
    volume of the copy, and its source runs on."""
    east, west = pair.east, pair.west
    tag = secrets.token_hex(3)
    name = f"f{tag}"
    image = await _image_only_on(east, tag)
    assert await west.inspect_image(image) is None
    await create_source(
        east, name=name, web_nodes=1, db_nodes=2, db_labels={}, seed_kib=2048, web_image=image
    )
    await asyncio.sleep(1)  # the writer gets going

    made = clonebot("clone", name, f"{name}-w", "--on", "west", "--as", OWNER, settings=settings)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "carry" in made.stdout and f"clonebot-test/web-{tag}" in made.stdout, made.stdout

    # the clone runs on west, from the carried image; nothing of it is on east
    nodes = await west.list_containers(labels=[f"com.docker.compose.project={name}-w"])
    assert sorted((c["Names"][0], c["State"]) for c in nodes) == [
        (f"/{name}-w-db-1", "running"),
        (f"/{name}-w-db-2", "running"),
        (f"/{name}-w-web-1", "running"),
    ]
    assert await west.inspect_image(image) is not None
    assert (await exec_output(west, f"{name}-w-web-1", "cat /made-on-east")).strip() == tag
    assert await east.list_containers(labels=[f"com.docker.compose.project={name}-w"]) == []
    assert await east.inspect_volume(f"{name}-w_data") is None
    jobs = json.loads(clonebot("jobs", "--json", settings=settings).stdout)
    job = next(j["id"] for j in jobs if j["environment"] == f"{name}-w")
    for lister in (east.list_containers, east.list_images, east.list_volumes):
        assert await lister(labels=[f"{JOB}={job}"]) == [], "the copy left something on east"

    # the data: one instant of the source, which runs on
    await asyncio.sleep(0.5)
    cloned = _numbers(await read_volume(west, f"{name}-w_data", "log"))
    written = _numbers(await read_volume(east, f"{name}_data", "log"))
    assert len(cloned) > 100 and cloned == list(range(1, len(cloned) + 1)), "a gap"
    assert written[: len(cloned)] == cloned and len(written) > len(cloned)
    seed = f"{name}_data"
    assert await exec_output(east, f"{name}_db_1", "md5sum /data/seed | cut -c1-32") == (
        await exec_output(west, f"{name}-w-db-1", "md5sum /data/seed | cut -c1-32")
    ), seed
    # the master's own files, and the second node is a copy of the clone's master
    for node in ("db-1", "db-2"):
        conf = await exec_output(west, f"{name}-w-{node}", "cat /etc/db/db.conf")
        assert conf.strip() == "conf"
    source = await east.list_containers(labels=[f"com.docker.compose.project={name}"])
    assert sorted(c["State"] for c in source) == ["running"] * 3

    envs = clonebot("envs", "--json", settings=settings).stdout
    listed = {e["name"]: e for e in json.loads(envs)}
    assert (listed[f"{name}-w"]["engine"], listed[f"{name}-w"]["state"]) == ("west", "up")
    assert listed[name]["engine"] == "east"

    # a refresh copies the source's data again, across the engines
    await exec_output(east, f"{name}_db_1", "echo later > /data/marker")
    refreshed = clonebot("refresh", f"{name}-w", "--as", OWNER, settings=settings)
    assert refreshed.returncode == 0, refreshed.stdout + refreshed.stderr
    assert (await read_volume(west, f"{name}-w_data", "marker")).strip() == "later"
    again = _numbers(await read_volume(west, f"{name}-w_data", "log"))
    assert len(again) > len(cloned) and again == list(range(1, len(again) + 1))
    jobs = json.loads(clonebot("jobs", "--json", settings=settings).stdout)
    for job in {j["id"] for j in jobs if j["environment"] == f"{name}-w"}:
        for lister in (east.list_containers, east.list_images, east.list_volumes):
            assert await lister(labels=[f"{JOB}={job}"]) == [], "a copy left something on east"


async def test_a_clone_on_another_engine_sharing_a_volume_is_refused_before_anything_is_made(
    pair: Pair, settings: Settings
) -> None:
    east, west = pair.east, pair.west
    name = f"f{secrets.token_hex(3)}"
    await create_source(
        east, name=name, web_nodes=1, db_nodes=1, seed_kib=8,
        db_labels={"clonebot.volume.data": "share"},
    )  # fmt: skip
    refused = clonebot("clone", name, f"{name}-w", "--on", "west", "--as", OWNER, settings=settings)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"db shares the volume {name}_data (at /data) with {name}" in refused.stderr
    assert "a clone on another engine cannot share it" in refused.stderr
    for docker in (east, west):
        for lister in (docker.list_containers, docker.list_volumes, docker.list_networks):
            assert await lister(labels=[f"com.docker.compose.project={name}-w"]) == []
    unknown = clonebot("clone", name, "--on", "north", "--as", OWNER, settings=settings)
    assert unknown.returncode == 2 and "no engine named 'north'" in unknown.stderr


async def test_a_clone_whose_target_engine_is_cut_off_mid_copy_fails_and_leaves_nothing(
    fleet_hosts: Hosts, pair: Pair, settings: Settings, tmp_path: Path
) -> None:
    """West, the clone's engine, cut off while the copy waits at its pre-copy: the job fails
    saying the engine is unreachable; east's source was never frozen and runs, east keeps no
    helper of the copy, and once west is back nothing of the clone is left there."""
    east = pair.east
    name = f"f{secrets.token_hex(3)}"
    await create_source(east, name=name, web_nodes=1, db_nodes=1, db_labels={}, seed_kib=64)
    release = tmp_path / "release"
    env = clonebot_env(settings) | {
        "CLONEBOT_FAILPOINT": "pre-copy",  # waits there until the test lets it go
        "CLONEBOT_FAILPOINT_RELEASE": str(release),
    }
    args = ["clone", name, f"{name}-cut", "--on", "west", "--as", OWNER]
    job = asyncio.create_task(asyncio.to_thread(run_cli, args, env=env))
    helper = f"{name}-cut-copy-db-"
    for _ in range(300):  # the copy helpers are up: the job waits at the failpoint
        if any(helper in n for c in await east.list_containers() for n in c["Names"]):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the clone never reached its copy")
    west = fleet_hosts.hosts[1]
    west.link_down()
    try:
        release.touch()
        started = asyncio.get_running_loop().time()
        # meanwhile, another clone asked onto west is refused at once, nothing kept
        late = ["clone", name, f"{name}-late", "--on", "west", "--as", OWNER]
        refused = await asyncio.to_thread(run_cli, late, env=clonebot_env(settings))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "engine west does not answer: no answer in 5 s" in refused.stderr
        # the job notices the partition (about 30 s) and fails
        await asyncio.sleep(max(0.0, 45 - (asyncio.get_running_loop().time() - started)))
    finally:
        west.link_up()
    done = await asyncio.wait_for(job, 240)  # its remains are removed once west is back
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot reach the Docker engine" in done.stderr, done.stderr
    jobs = json.loads(clonebot("jobs", "--json", settings=settings).stdout)
    job_id = next(j["id"] for j in jobs if j["environment"] == f"{name}-cut")
    assert [j for j in jobs if j["environment"] == f"{name}-late"] == []
    after = EngineSpec("west", west.tcp_url, west.tls_dir).connect()
    try:
        for docker in (east, after):
            for lister in (docker.list_containers, docker.list_volumes, docker.list_networks):
                assert await lister(labels=[f"{JOB}={job_id}"]) == []
            assert await docker.list_images(labels=[f"{JOB}={job_id}"]) == []
    finally:
        await after.close()
    source = await east.list_containers(labels=[f"com.docker.compose.project={name}"])
    assert sorted(c["State"] for c in source) == ["running", "running"]


async def test_a_source_engine_cut_off_during_the_freeze_is_resumed_by_its_watchdog(
    fleet_hosts: Hosts, pair: Pair, settings: Settings, tmp_path: Path
) -> None:
    """East, the source's engine, cut off from clonebot while its master is frozen: the
    watchdog clonebot armed on east resumes the master there within the freeze timeout and
    its margin, though clonebot cannot reach east; the job then fails, and once east is back
    nothing of the clone is left on either engine, nor the watchdog."""
    east = pair.east
    host = fleet_hosts.hosts[0]
    name = f"f{secrets.token_hex(3)}"
    await create_source(east, name=name, web_nodes=1, db_nodes=1, db_labels={}, seed_kib=64)
    master = f"{name}_db_1"
    release = tmp_path / "release"
    env = clonebot_env(settings) | {
        "CLONEBOT_FAILPOINT": "freeze",  # the master is frozen; waits until let go
        "CLONEBOT_FAILPOINT_RELEASE": str(release),
        "CLONEBOT_FREEZE_TIMEOUT": "4",
    }
    args = ["clone", name, f"{name}-cut", "--on", "west", "--as", OWNER]
    job = asyncio.create_task(asyncio.to_thread(run_cli, args, env=env))

    def paused() -> bool:  # asked through east's socket, which the partition leaves alone
        return host.docker("inspect", "-f", "{{.State.Paused}}", master).strip() == "true"

    for _ in range(300):
        if paused():
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the source was never frozen")
    frozen = asyncio.get_running_loop().time()  # the watchdog was armed just before
    watchdogs = host.docker("ps", "-q", "--filter", "label=clonebot.watchdog")
    assert watchdogs.strip(), "no watchdog on east"
    host.link_down()
    try:
        release.touch()
        while paused():
            assert asyncio.get_running_loop().time() - frozen < 30, "still frozen"
            await asyncio.sleep(0.2)
        resumed_after = asyncio.get_running_loop().time() - frozen
    finally:
        host.link_up()
    # the watchdog's time (the timeout and its margin, 9 s from its arming), not clonebot's
    # (4 s): clonebot could not reach east
    assert 7 <= resumed_after < 20, f"resumed after {resumed_after:.1f} s"
    done = await asyncio.wait_for(job, 300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the final copy pass took over 4 s" in done.stderr, done.stderr
    assert "watchdog" not in done.stderr, done.stderr
    jobs = json.loads(clonebot("jobs", "--json", settings=settings).stdout)
    job_id = next(j["id"] for j in jobs if j["environment"] == f"{name}-cut")
    west = EngineSpec("west", fleet_hosts.hosts[1].tcp_url, fleet_hosts.hosts[1].tls_dir)
    after = [EngineSpec("east", host.tcp_url, host.tls_dir).connect(), west.connect()]
    try:
        for docker in after:
            for lister in (docker.list_containers, docker.list_volumes, docker.list_networks):
                assert await lister(labels=[f"{JOB}={job_id}"]) == []
    finally:
        for docker in after:
            await docker.close()
    assert host.docker("ps", "-aq", "--filter", "label=clonebot.watchdog").strip() == ""
    states = host.docker(
        "ps", "-a", "--format", "{{.State}}", "--filter", f"label=com.docker.compose.project={name}"
    )
    assert sorted(states.split()) == ["running", "running"]


async def test_the_router_reaches_a_clone_on_another_engine_and_swaps_and_splits_across(
    pair: Pair, settings: Settings, make_source: MakeSource, tmp_path: Path
) -> None:
    """A source here (local), its clone on west: the clone's web node publishes its HTTP port
    there, and HAProxy on this host serves the clone's domain from west at west's address;
    a domain swapped to the clone, then split between both, is served across the engines."""
    source = (await make_source(web_nodes=1, db_nodes=1)).name
    clone = f"{source}-w"
    made = clonebot("clone", source, clone, "--on", "west", "--as", OWNER, settings=settings)
    assert made.returncode == 0, made.stdout + made.stderr
    assert f"{clone}-web-1 80/tcp: published on host port" in made.stdout, made.stdout
    await exec_output(pair.west, f"{clone}-web-1", "echo on west > /www/index.html")
    # on west's address only: the clone's site is not open on west's other addresses
    published = (await pair.west.inspect_container(f"{clone}-web-1"))["NetworkSettings"]["Ports"]
    assert [b["HostIp"] for b in published["80/tcp"]] == [pair.west.host_address]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        bind = f"127.0.0.1:{sock.getsockname()[1]}"
    assert settings.router_dir is not None
    files = RouterFiles(settings.router_dir)
    me = Request(OWNER)

    async def page(session: aiohttp.ClientSession, host: str) -> str:
        headers = {"Host": host, "Connection": "close"}
        async with session.get(f"http://{bind}/", headers=headers) as resp:
            assert resp.status == 200, (host, resp.status)
            return (await resp.text()).strip()

    async def apply(svc: Services) -> None:
        assert await apply_routes(svc, files=files, bind=bind)
        await asyncio.sleep(0.3)  # a reload: the new worker settles

    async with open_services(settings) as svc:
        state = await router_state(svc)
        haproxy = EmbeddedHAProxy(files=files)
        await haproxy.start(
            config=render_config(files=files, bind=bind, backends=state.backends),
            hosts=state.hosts,
        )
        try:
            nodes = await web_nodes(svc)
            west = nodes.envs[clone][0]
            assert west.address == "10.215.0.12" and west.port != 80, west
            await add_domain(svc, me, env=source, domain="shop.test")
            await apply(svc)
            async with aiohttp.ClientSession() as session:
                assert await page(session, f"{clone}.clonebot.test") == "on west"
                assert await page(session, "shop.test") == f"{source} web 1"
                await swap_domains(svc, me, first=source, second=clone)
                await apply(svc)
                assert await page(session, "shop.test") == "on west"
                weights = {source: 50, clone: 50}
                await set_split(svc, me, domain="shop.test", weights=weights, sticky=False)
                await apply(svc)
                seen = Counter([await page(session, "shop.test") for _ in range(200)])
                assert set(seen) == {"on west", f"{source} web 1"}, seen
        finally:
            await haproxy.stop()


async def test_a_clone_goes_to_the_engine_with_the_most_free_disk_when_its_sources_lacks_room(
    fleet_hosts: Hosts, pair: Pair, settings: Settings
) -> None:
    """North, the source's engine, has too little disk for the copy and its reserve: the
    clone goes to the engine with the most free disk, and the progress says so; named with
    ``--on north``, the clone is refused there instead, and nothing is made."""
    host = fleet_hosts.hosts[2]
    args = ["engine", "add", "north", host.tcp_url, "--tls-dir", str(host.tls_dir)]
    assert clonebot(*args, "--as", ADMIN, settings=settings).returncode == 0
    north = EngineSpec("north", host.tcp_url, host.tls_dir).connect()
    name = f"f{secrets.token_hex(3)}"
    env = clonebot_env(settings) | {"COLUMNS": "200", "CLONEBOT_DISK_RESERVE": str(400 << 20)}
    try:
        await create_source(north, name=name, web_nodes=1, db_nodes=1, db_labels={}, seed_kib=512)
        refused = run_cli(["clone", name, f"{name}-n", "--on", "north", "--as", OWNER], env=env)
        assert refused.returncode != 0 and "not enough free disk" in refused.stderr, refused
        assert await north.list_containers(labels=[f"com.docker.compose.project={name}-n"]) == []

        made = run_cli(["clone", name, f"{name}-c", "--as", OWNER], env=env)
        assert made.returncode == 0, made.stdout + made.stderr
        listed = {
            e["name"]: e for e in json.loads(clonebot("envs", "--json", settings=settings).stdout)
        }
        engine = listed[f"{name}-c"]["engine"]
        assert engine != "north" and listed[f"{name}-c"]["state"] == "up"
        said = " ".join(made.stdout.split())
        assert "engine north lacks room (not enough free disk" in said, said
        assert f"cloning onto engine {engine} instead, which has the most free disk" in said
        jobs = json.loads(clonebot("jobs", "--json", settings=settings).stdout)
        assert [j["engine"] for j in jobs if j["environment"] == f"{name}-c"] == [engine]
    finally:
        clonebot("delete", f"{name}-c", "--as", OWNER, settings=settings)
        await remove_projects(north, {name})
        await north.close()

"""Several Docker engines: added, listed, refused, and an environment on one of them found,
cloned there, its name held across the fleet, and shown unreachable while its host is cut off.

The engines are hosts of their own (tests/fleet/hosts.py): dockerd in network namespaces,
reached over TCP with TLS client certificates, as a remote engine is.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncssh
import pytest

from services.context import open_services
from services.docker import DockerClient
from services.environments import JOB, PROJECT
from services.fleet import EngineSpec
from services.settings import Settings
from storage.models import EnvironmentRecord, Job, JobState, utcnow
from tests.cli import clonebot, clonebot_env, run_cli
from tests.conftest import (
    ADMIN,
    OWNER,
    MakeSource,
    create_source,
    in_volume,
    read_volume,
    remove_projects,
)
from tests.fleet.hosts import Fleet as Hosts

pytestmark = [pytest.mark.alone, pytest.mark.own_engines]


@pytest.fixture
async def west(fleet_hosts: Hosts) -> AsyncIterator[DockerClient]:
    """A client of host 2 over TCP and TLS, as clonebot reaches it; what the test made on it
    is removed after."""
    host = fleet_hosts.hosts[1]
    docker = EngineSpec("west", host.tcp_url, host.tls_dir).connect()
    yield docker
    host.link_up()
    await remove_projects(docker, {p for p in await _projects(docker) if p.startswith("f")})
    await docker.close()


async def _projects(docker: DockerClient) -> set[str]:
    return {
        (c.get("Labels") or {}).get("com.docker.compose.project", "")
        for c in await docker.list_containers(labels=["com.docker.compose.project"])
    }


def _add(settings: Settings, name: str, url: str, tls: Path | None, *, user: str = ADMIN) -> str:
    args = ["engine", "add", name, url, "--as", user] + (["--tls-dir", str(tls)] if tls else [])
    done = clonebot(*args, settings=settings)
    return f"{done.returncode} {done.stdout}{done.stderr}"


def test_engines_are_added_only_when_they_answer_once_and_with_tls(
    fleet_hosts: Hosts, settings: Settings, tmp_path: Path
) -> None:
    east, west = fleet_hosts.hosts[0], fleet_hosts.hosts[1]
    added = _add(settings, "east", east.tcp_url, east.tls_dir)
    assert added.startswith("0 engine east added: Docker 20.10"), added
    assert "on cbh1" in added

    # the same engine under another name, or behind its socket, is refused
    again = _add(settings, "again", east.unix_url, None)
    assert again.startswith("2 ") and "is engine east, which clonebot has already" in again
    # a stranger may not add one; the refusal is audited
    stranger = _add(settings, "west", west.tcp_url, west.tls_dir, user="USTRANGER1")
    assert stranger.startswith("2 ") and "only an admin (CLONEBOT_ADMINS) may add" in stranger
    audit = json.loads(clonebot("audit", "--json", settings=settings).stdout)
    refused = [e for e in audit if e["action"] == "engine add" and not e["allowed"]]
    assert [e["actor"] for e in refused] == ["USTRANGER1"]
    # TCP without TLS, TLS files missing, a bad name, a URL that is no engine's
    plain = _add(settings, "west", west.tcp_url, None)
    assert plain.startswith("2 ") and "needs TLS" in plain
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(west.tls_dir / "ca.pem", half)
    assert "lacks cert.pem, key.pem" in _add(settings, "west", west.tcp_url, half)
    assert "invalid engine name 'West!'" in _add(settings, "West!", west.tcp_url, west.tls_dir)
    nothing = _add(settings, "west", "tcp://10.215.0.99:2376", west.tls_dir)
    assert nothing.startswith("2 ") and "does not answer" in nothing

    assert _add(settings, "west", west.tcp_url, west.tls_dir).startswith("0 engine west added")
    listed = json.loads(clonebot("engine", "list", "--json", settings=settings).stdout)
    assert [(e["name"], e["from"], e["answers"]) for e in listed] == [
        ("local", "setting", True),
        ("east", "added", True),
        ("west", "added", True),
    ]
    removed = clonebot("engine", "remove", "west", "--as", ADMIN, settings=settings)
    assert removed.returncode == 0, removed.stderr
    local = clonebot("engine", "remove", "local", "--as", ADMIN, settings=settings)
    assert "engine local comes from DOCKER_HOST" in local.stderr
    names = [
        e["name"]
        for e in json.loads(clonebot("engine", "list", "--json", settings=settings).stdout)
    ]
    assert names == ["local", "east"]


async def test_an_environment_on_another_engine_is_cloned_there_and_shown_unreachable_when_cut_off(
    fleet_hosts: Hosts, settings: Settings, west: DockerClient, make_source: MakeSource
) -> None:
    host = fleet_hosts.hosts[1]
    assert _add(settings, "west", host.tcp_url, host.tls_dir).startswith("0 ")
    name = f"f{secrets.token_hex(3)}"
    await create_source(west, name=name, web_nodes=1, db_nodes=1, db_labels={}, seed_kib=64)
    here = await make_source(web_nodes=1, db_nodes=0)  # on the shared engine: local

    listed = {
        e["name"]: e for e in json.loads(clonebot("envs", "--json", settings=settings).stdout)
    }
    assert (listed[name]["engine"], listed[name]["state"]) == ("west", "up")
    assert listed[here.name]["engine"] == "local"

    made = clonebot("clone", name, f"{name}-copy", "--as", OWNER, settings=settings)
    assert made.returncode == 0, made.stderr
    assert f"{name}-copy-db-1" in host.docker("ps", "--format", "{{.Names}}")
    copy = await west.list_containers(labels=[f"com.docker.compose.project={name}-copy"])
    assert len(copy) == 2 and all(c["State"] == "running" for c in copy)

    # names are unique across the engines
    taken = clonebot("clone", name, here.name, "--as", OWNER, settings=settings)
    assert (
        taken.returncode == 2
        and f"an environment named '{here.name}' already exists" in taken.stderr
    )

    host.link_down()  # a partition: host 2's engine no longer answers
    cut = clonebot("envs", "--json", settings=settings)
    assert cut.returncode == 0 and "engine west does not answer" in cut.stderr
    states = {e["name"]: (e["engine"], e["state"]) for e in json.loads(cut.stdout)}
    assert states[name] == ("west", "unreachable")
    assert states[f"{name}-copy"] == ("west", "unreachable")
    assert states[here.name] == ("local", "up")  # the others are unaffected
    refused = clonebot("clone", name, "--as", OWNER, settings=settings)
    assert refused.returncode == 1 and "engine west does not answer" in refused.stderr
    engines = json.loads(clonebot("engine", "list", "--json", settings=settings).stdout)
    assert [(e["name"], e["answers"]) for e in engines] == [("local", True), ("west", False)]

    host.link_up()
    back = {
        e["name"]: e["state"]
        for e in json.loads(clonebot("envs", "--json", settings=settings).stdout)
    }
    assert back[name] == back[f"{name}-copy"] == "up"
    busy = clonebot("engine", "remove", "west", "--as", ADMIN, settings=settings)
    assert busy.returncode == 2 and f"engine west holds {name}, {name}-copy" in busy.stderr


async def test_a_clone_on_an_engine_cut_off_mid_copy_fails_saying_so_and_leaves_nothing(
    fleet_hosts: Hosts, settings: Settings, tmp_path: Path
) -> None:
    """A partition of the engine a clone is made on: the job fails within about half a
    minute, says the engine is unreachable, and once the engine is back nothing of the
    clone is left there; the source was never frozen (the copy had not reached the freeze)."""
    host = fleet_hosts.hosts[1]
    assert _add(settings, "west", host.tcp_url, host.tls_dir).startswith("0 ")
    name = f"f{secrets.token_hex(3)}"
    # a client of the test's own on each side of the partition: one whose connections the
    # partition broke would leave them to the garbage collector
    west = EngineSpec("west", host.tcp_url, host.tls_dir).connect()
    await create_source(west, name=name, web_nodes=1, db_nodes=1, db_labels={}, seed_kib=64)
    release = tmp_path / "release"
    env = clonebot_env(settings) | {
        "CLONEBOT_FAILPOINT": "pre-copy",  # waits there until the test lets it go
        "CLONEBOT_FAILPOINT_RELEASE": str(release),
    }
    args = ["clone", name, f"{name}-cut", "--as", OWNER]
    job = asyncio.create_task(asyncio.to_thread(run_cli, args, env=env))
    helper = f"{name}-cut-copy-db-"
    for _ in range(300):  # the clone's copy helper is up: the job waits at the failpoint
        if any(helper in n for c in await west.list_containers() for n in c["Names"]):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the clone never reached its copy")
    await west.close()
    host.link_down()
    release.touch()
    await asyncio.sleep(45)  # the job notices the partition (about 30 s) and fails
    host.link_up()
    done = await asyncio.wait_for(job, 240)  # its remains are removed once the engine is back
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot reach the Docker engine" in done.stderr, done.stderr
    west = EngineSpec("west", host.tcp_url, host.tls_dir).connect()
    try:
        await _nothing_left(west, settings, name)
    finally:
        await remove_projects(west, {name})
        await west.close()


async def _nothing_left(west: DockerClient, settings: Settings, name: str) -> None:
    left = [
        item
        for lister in (west.list_containers, west.list_volumes, west.list_networks)
        for item in await lister(labels=[f"com.docker.compose.project={name}-cut"])
    ]
    assert left == []
    source = await west.list_containers(labels=[f"com.docker.compose.project={name}"])
    assert sorted(c["State"] for c in source) == ["running", "running"]
    listed = {e["name"] for e in json.loads(clonebot("envs", "--json", settings=settings).stdout)}
    assert name in listed and f"{name}-cut" not in listed


async def test_recovery_waits_for_an_engine_away_and_finishes_once_it_is_back(
    fleet_hosts: Hosts, settings: Settings
) -> None:
    """A job left running by a dead process, on an engine cut off: `recover` recovers what it
    can, leaves that job for later (not failed, not half done), and recovers it once the
    engine is back: what it made there is removed."""
    host = fleet_hosts.hosts[1]
    assert _add(settings, "west", host.tcp_url, host.tls_dir).startswith("0 ")
    job, name = secrets.token_hex(6), f"f{secrets.token_hex(3)}-lost"
    west = EngineSpec("west", host.tcp_url, host.tls_dir).connect()
    try:
        await west.create_network({"Name": f"{name}_default", "Labels": {JOB: job}})
    finally:
        await west.close()
    async with open_services(settings) as svc, svc.sessions() as session:
        session.add(EnvironmentRecord(name=name, owner=OWNER, state="creating", engine="west"))
        session.add(
            Job(
                id=job, kind="clone", state=JobState.RUNNING, environment=name, source="prod",
                requester=OWNER, params={}, steps=[], frozen=[], engine="west",
                source_engine="west", claimed_by=f"{socket.gethostname()}:999999999:0",
                lease_until=utcnow() - timedelta(minutes=1),
            )
        )  # fmt: skip
        await session.commit()

    host.link_down()
    try:
        away = clonebot("recover", settings=settings)
        assert away.returncode == 0 and "0 job(s) recovered" in away.stdout, away.stderr
        jobs = json.loads(clonebot("jobs", "--json", settings=settings).stdout)
        assert [j["state"] for j in jobs if j["id"] == job] == ["running"]
    finally:
        host.link_up()
    back = clonebot("recover", settings=settings)
    assert back.returncode == 0 and "1 job(s) recovered" in back.stdout, back.stdout + back.stderr
    west = EngineSpec("west", host.tcp_url, host.tls_dir).connect()
    try:
        assert await west.list_networks(labels=[f"{JOB}={job}"]) == []
    finally:
        await west.close()


async def test_an_ssh_engine_is_reached_with_its_own_key_only_cloned_from_and_cut_off(
    fleet_hosts: Hosts, settings: Settings, tmp_path: Path
) -> None:
    """``ssh://root@host``, as the Docker CLI reaches an engine: clonebot uses the key and
    known_hosts of the engine's folder (a host key it does not know, or a key the host does
    not take, is refused, nothing added), the host's key lets it run only ``docker system
    dial-stdio``; an environment there is cloned onto this host's engine (its data relayed
    from a helper there, its freeze guarded there), and the engine shown away when cut off."""
    host = fleet_hosts.hosts[2]
    stranger = tmp_path / "stranger"  # another host's key in known_hosts
    shutil.copytree(host.ssh_dir, stranger)
    (stranger / "known_hosts").write_text(
        (fleet_hosts.hosts[0].ssh_dir / "known_hosts")
        .read_text()
        .replace(fleet_hosts.hosts[0].address, host.address)
    )
    unknown = _add(settings, "south", host.ssh_url, stranger)
    assert unknown.startswith("2 ") and "the host's key is not in known_hosts" in unknown
    refused = tmp_path / "refused"  # a key the host does not take
    shutil.copytree(host.ssh_dir, refused)
    (refused / "id_ed25519").unlink()
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(refused / "id_ed25519")
    wrong = _add(settings, "south", host.ssh_url, refused)
    assert wrong.startswith("2 ") and "the key was refused" in wrong, wrong
    assert "south" not in clonebot("engine", "list", settings=settings).stdout

    added = _add(settings, "south", host.ssh_url, host.ssh_dir)
    assert added.startswith("0 engine south added: Docker 20.10") and "on cbh3" in added, added
    name = f"f{secrets.token_hex(3)}"
    south = EngineSpec("south", host.ssh_url, host.ssh_dir).connect()
    try:
        # more calls at once than sshd serves sessions on one connection (MaxSessions 10)
        answers = await asyncio.gather(*(south.info() for _ in range(25)))
        assert {a["Name"] for a in answers} == {"cbh3"}
        await create_source(south, name=name, web_nodes=1, db_nodes=1, db_labels={}, seed_kib=256)
        await asyncio.sleep(1)  # the writer gets going
        made = clonebot(
            "clone", name, f"{name}-here", "--on", "local", "--as", OWNER, settings=settings
        )
        assert made.returncode == 0, made.stdout + made.stderr
        async with DockerClient() as local:
            copy = await local.list_containers(labels=[f"{PROJECT}={name}-here"])
            assert sorted(c["State"] for c in copy) == ["running", "running"]
            seed = await in_volume(local, f"{name}-here_data", "md5sum /v/seed")
            log = await read_volume(local, f"{name}-here_data", "log")
            cloned = [int(line.split()[0]) for line in log.splitlines() if line.strip()]
            await remove_projects(local, {f"{name}-here"})
        source_seed = await in_volume(south, f"{name}_data", "md5sum /v/seed")
        assert seed.split()[0] == source_seed.split()[0]
        assert cloned == list(range(1, len(cloned) + 1)) and cloned, "a gap-free prefix"
        source = await south.list_containers(labels=[f"{PROJECT}={name}"])
        assert sorted(c["State"] for c in source) == ["running", "running"]
        assert [c for c in await south.list_containers() if "watchdog" in c["Names"][0]] == []

        host.link_down()
        listed = json.loads(clonebot("engine", "list", "--json", settings=settings).stdout)
        assert [(e["name"], e["answers"]) for e in listed] == [("local", True), ("south", False)]
        envs = clonebot("envs", "--json", settings=settings)
        assert "engine south does not answer" in envs.stderr
    finally:
        host.link_up()
        await remove_projects(south, {name})
        await south.close()

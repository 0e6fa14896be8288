"""The demo environment, on the real engine: made once, left alone after, cloned as any other.

Its image is built by debootstrap the first time (about a minute, then kept by the engine).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.context import Services, open_services
from services.demo import COLLABORATOR, OWNER, DemoReport, ensure_demo, remove_demo
from services.demo_image import BIN, BUSYBOX, ensure_postgres_image
from services.demo_nodes import ROWS, SOCKET
from services.docker import DockerClient
from services.environments import PROJECT, get_environment
from services.errors import BadRequest, DockerFailed
from services.lifecycle import clone_environment
from services.naming import node_name
from services.settings import Settings
from storage import repositories as repo
from tests.conftest import IMAGE, exec_output, remove_projects


@pytest.fixture
async def demo_svc(settings: Settings, docker: DockerClient) -> AsyncIterator[Services]:
    """The services over a fresh SQLite database; every project of the test removed after."""
    async with open_services(settings) as svc:
        yield svc


@pytest.fixture
async def demo(demo_svc: Services, docker: DockerClient) -> AsyncIterator[DemoReport]:
    """A demo under a random name, made by ``ensure_demo``; it and its clones removed after."""
    name = f"demo{secrets.token_hex(3)}"
    try:
        yield await ensure_demo(demo_svc, name=name)
    finally:
        await remove_projects(docker, {name, f"{name}-copy"})


async def page(docker: DockerClient, *, env: str, number: int = 1, want: str = "") -> str:
    """The page a web node of ``env`` serves, once it shows ``want`` (a clone's database
    starts with its nodes: the first requests may find it recovering)."""
    node = node_name(env=env, layer="web", number=number)
    deadline = time.monotonic() + 30
    while True:
        html = await exec_output(docker, node, f"{BUSYBOX} wget -qO- http://127.0.0.1/")
        if want in html or time.monotonic() > deadline:
            return html
        await asyncio.sleep(0.3)


def shows(html: str, *, env: str, rows: int) -> bool:
    return f"<b id=env>{env}</b>" in html and f"<b id=count>{rows}</b>" in html


async def test_ensure_demo_makes_the_project_and_its_records(
    demo: DemoReport, demo_svc: Services, docker: DockerClient
) -> None:
    name = demo.name
    assert demo.served_by == name
    assert f"created network {name}_default" in demo.done
    assert f"created volume {name}_data" in demo.done
    assert f"filled its database with {ROWS} orders" in demo.done
    assert f"bound shop.localhost to {name}" in demo.done
    env = await get_environment(docker, name)
    assert env.owner == OWNER
    layers = {layer.name: layer for layer in env.layers}
    assert layers["db"].scaling == "stateful" and len(layers["db"].nodes) == 1
    assert layers["web"].http_port == 80 and len(layers["web"].nodes) == 2
    assert all(node.state == "running" for node in env.nodes)
    async with demo_svc.sessions() as session:
        record = await repo.get_environment(session, name)
    assert record is not None and record.owner == OWNER
    assert {(c.user, c.role) for c in record.collaborators} == {(COLLABORATOR, "operator")}


async def test_ensure_demo_again_changes_nothing(
    demo: DemoReport, demo_svc: Services, docker: DockerClient
) -> None:
    before = {c["Id"] for c in await docker.list_containers(labels=[f"{PROJECT}={demo.name}"])}
    again = await ensure_demo(demo_svc, name=demo.name)
    assert again.done == []
    assert again.served_by == demo.name
    after = {c["Id"] for c in await docker.list_containers(labels=[f"{PROJECT}={demo.name}"])}
    assert after == before and len(after) == 3


async def test_a_stopped_node_is_started_and_the_data_kept(
    demo: DemoReport, demo_svc: Services, docker: DockerClient
) -> None:
    db = node_name(env=demo.name, layer="db", number=1)
    web = node_name(env=demo.name, layer="web", number=2)
    await _psql(docker, db, "DELETE FROM orders WHERE id > 40")
    await docker.stop_container(db)
    await docker.stop_container(web, timeout_s=1)  # its httpd, PID 1, ignores SIGTERM
    again = await ensure_demo(demo_svc, name=demo.name)
    assert again.done == [f"started {db}", f"started {web}"]  # no orders added back
    assert shows(await page(docker, env=demo.name, number=2, want="id=count>40"),
                 env=demo.name, rows=40)  # fmt: skip


async def test_each_web_node_shows_its_environment_and_the_orders(
    demo: DemoReport, docker: DockerClient
) -> None:
    for number in (1, 2):
        html = await page(docker, env=demo.name, number=number)
        assert shows(html, env=demo.name, rows=ROWS), html
        assert node_name(env=demo.name, layer="web", number=number) in html


async def test_a_clone_shows_its_own_name_and_its_own_data(
    demo: DemoReport, demo_svc: Services, docker: DockerClient
) -> None:
    copy = f"{demo.name}-copy"
    await clone_environment(docker, demo_svc.settings, source=demo.name, name=copy)
    assert shows(await page(docker, env=copy, want="id=count>"), env=copy, rows=ROWS)
    # the clone's page reads the clone's database, not the source's
    await _psql(docker, node_name(env=copy, layer="db", number=1), "INSERT INTO orders (item) "
                "VALUES ('only in the copy')")  # fmt: skip
    assert shows(await page(docker, env=copy, number=2), env=copy, rows=ROWS + 1)
    assert shows(await page(docker, env=demo.name), env=demo.name, rows=ROWS)


async def test_remove_demo_takes_it_all_away(demo: DemoReport, demo_svc: Services) -> None:
    docker = demo_svc.docker
    assert await remove_demo(demo_svc, name=demo.name) is True
    label = [f"{PROJECT}={demo.name}"]
    assert await docker.list_containers(labels=label) == []
    assert await docker.list_volumes(labels=label) == []
    assert await docker.list_networks(labels=label) == []
    async with demo_svc.sessions() as session:
        assert await repo.get_environment(session, demo.name) is None
    assert await remove_demo(demo_svc, name=demo.name) is False


async def test_a_project_of_that_name_that_is_not_the_demo_is_left_alone(
    demo_svc: Services, docker: DockerClient
) -> None:
    name = f"demo{secrets.token_hex(3)}"
    labels = {PROJECT: name, "com.docker.compose.service": "app"}
    config = {"Image": IMAGE, "Cmd": ["sleep", "600"], "Labels": labels}
    await docker.create_container(name=f"{name}-app-1", config=config)
    try:
        with pytest.raises(BadRequest, match="is not the demo"):
            await ensure_demo(demo_svc, name=name)
        assert await docker.inspect_network(f"{name}_default") is None
    finally:
        await remove_projects(docker, {name})


async def test_a_missing_image_without_what_builds_it_says_what_to_install(
    docker: DockerClient, tmp_path: Path
) -> None:
    absent = f"clonebot-demo/absent:{secrets.token_hex(3)}"
    with pytest.raises(DockerFailed, match="busybox-static"):
        await ensure_postgres_image(docker, image=absent, busybox=tmp_path / "busybox")
    assert await docker.inspect_image(absent) is None


async def _psql(docker: DockerClient, node: str, sql: str) -> str:
    return await exec_output(
        docker, node, f'{BIN}/psql -h {SOCKET} -U postgres -d postgres -tAc "{sql}"'
    )

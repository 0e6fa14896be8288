"""An HAProxy run by others, in a container: clonebot writes its files, connects it to the
environments' networks and drives it through its sockets in the shared router folder."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.access import Request
from services.context import Services, open_services
from services.docker import DockerClient
from services.jobs import run_job, submit_clone, submit_delete
from services.settings import Settings
from services.traffic.haproxy import RouterFiles
from services.traffic.router import apply_routes
from services.traffic.routing import add_domain, swap_domains
from tests.conftest import OWNER, MakeSource, _free_port
from tests.serving import page_at

HAPROXY_IMAGE = "clonebot-test/haproxy:latest"  # scripts/build-test-images.sh makes it
# alone: clonebot connects the HAProxy container to every environment's network on the
# engine, other tests' too (which then could not remove theirs)
pytestmark = pytest.mark.alone


@pytest.fixture
async def haproxy_container(docker: DockerClient, tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """An HAProxy container, created but not started, the router folder mounted at the same
    path, its port 8080 published on 127.0.0.1: its name and the host port."""
    router_dir = tmp_path / "router"
    router_dir.mkdir()
    files, name, port = RouterFiles(router_dir), f"haproxy-{secrets.token_hex(3)}", _free_port()
    config = {
        "Image": HAPROXY_IMAGE,
        "Cmd": ["haproxy", "-W", "-S", str(files.master), "-f", str(files.config)],
        "ExposedPorts": {"8080/tcp": {}},
        "HostConfig": {
            "Binds": [f"{router_dir}:{router_dir}"],
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]},
        },
    }
    await docker.create_container(name=name, config=config)
    try:
        yield name, port
    finally:
        await docker.remove_container(name)


async def _until_answers(svc: Services, files: RouterFiles) -> None:
    bind = svc.settings.router_bind
    async with asyncio.timeout(15):
        # polling: nothing to wait on but HAProxy's answer
        while not await apply_routes(svc, files=files, bind=bind):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_an_haproxy_in_a_container_serves_the_routes(
    settings: Settings,
    docker: DockerClient,
    make_source: MakeSource,
    haproxy_container: tuple[str, int],
    tmp_path: Path,
) -> None:
    name, port = haproxy_container
    external = settings.model_copy(
        update={
            "router_mode": "external",
            "router_container": name,
            "router_bind": "0.0.0.0:8080",
            "router_dir": tmp_path / "router",
        }
    )
    files = RouterFiles(tmp_path / "router")
    blue, green = (await make_source(web_nodes=1)).name, (await make_source(web_nodes=1)).name
    me = Request(OWNER)
    async with open_services(external) as svc:
        await add_domain(svc, me, env=blue, domain="shop.test")
        assert not await apply_routes(svc, files=files, bind=external.router_bind), "not started"
        info = await docker.inspect_container(name)
        assert {f"{blue}_default", f"{green}_default"} <= info["NetworkSettings"]["Networks"].keys()

        await docker.start_container(name)
        await _until_answers(svc, files)
        assert await page_at(f"127.0.0.1:{port}", "shop.test") == f"{blue} web 1"
        assert await page_at(f"127.0.0.1:{port}", f"{green}.clonebot.test") == f"{green} web 1"

        await swap_domains(svc, me, first=blue, second=green)
        assert await apply_routes(svc, files=files, bind=external.router_bind)
        assert await page_at(f"127.0.0.1:{port}", "shop.test", within_s=2) == f"{green} web 1"

        # a clone is reached on its own network; deleting it leaves HAProxy on nothing of it
        clone = await run_job(svc, (await submit_clone(svc, me, source=blue, name=None)).id)
        await apply_routes(svc, files=files, bind=external.router_bind)
        assert (
            await page_at(f"127.0.0.1:{port}", f"{clone.environment}.clonebot.test")
            == f"{blue} web 1"
        )
        deleted = await run_job(
            svc, (await submit_delete(svc, me, name=clone.environment, force=False)).id
        )
        assert deleted.state == "succeeded", deleted.error
        assert (
            await docker.list_networks(labels=[f"com.docker.compose.project={clone.environment}"])
            == []
        )
        assert await apply_routes(svc, files=files, bind=external.router_bind)
        assert await page_at(f"127.0.0.1:{port}", "shop.test") == f"{green} web 1"

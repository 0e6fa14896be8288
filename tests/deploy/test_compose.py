"""The production stack (deploy/compose.yaml) on the private engine: clonebot's image and the
stack's PostgreSQL built by scripts/build-image.sh (on a Debian base made here with
debootstrap, nothing pulled), started with docker-compose, every service healthy; then a
clone made with the container's command line, and traffic moved to it through the stack's
HAProxy, seen from the host on the router's published port."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.docker import DockerClient
from services.settings import Settings
from tests.conftest import ADMIN, BASE_DOMAIN, OWNER, MakeSource, _free_port, exec_output
from tests.serving import page_at

# alone: the stack's HAProxy container is connected to every environment's network on the
# engine, other tests' too (which then could not remove theirs)
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.alone]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
BUILD_S = 900  # the first build also makes the base with debootstrap: minutes
HEALTHY_S = 180  # on a loaded 2-core machine; about 25 s when it is idle
STEP_S = 120  # one compose or clonebot command
# the Dockerfile's stages carry it: the classic builder leaves their images, untagged
STAGE = "org.clonebot.stage"
# kept, as the base is: the slow stages (Debian's packages, the dependencies' wheels)
CACHE_PREFIX = "clonebot-cache"


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    router_port: int
    timings: dict[str, float]

    async def compose(self, *args: str) -> str:
        return await run("docker-compose", "-p", self.project, "-f", str(COMPOSE), *args,
                         env=self.env, within_s=STEP_S)  # fmt: skip

    async def clonebot(self, *args: str) -> str:
        """A clonebot command run in the stack's clonebot container, as its own user."""
        return await self.compose("exec", "-T", "clonebot", "clonebot", *args)


async def run(*argv: str, env: dict[str, str], within_s: float) -> str:
    """A program's output; its last lines in the failure if it exits non-zero."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(within_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{' '.join(argv[:6])} took more than {within_s} s") from None
    text = out.decode(errors="replace")
    tail = "\n".join(text.splitlines()[-30:])
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{tail}"
    return text


def _socket_path(docker_host: str) -> str:
    assert docker_host.startswith("unix://"), "the stack mounts the engine's socket"
    return docker_host.removeprefix("unix://")


@pytest.fixture
async def stack(settings: Settings, docker: DockerClient) -> AsyncIterator[Stack]:
    """The stack built and started under a project name of its own, with images of its own;
    afterwards its containers, networks, volumes and images are gone (the base and the
    build's cache, CACHE_PREFIX/*, are kept)."""
    tag = secrets.token_hex(3)
    project = f"cbdeploy{tag}"
    router_port = _free_port()
    socket = _socket_path(settings.docker_host)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CLONEBOT_"))}
    env.update(
        DOCKER_HOST=settings.docker_host,
        CACHE_PREFIX=CACHE_PREFIX,
        CLONEBOT_IMAGE=f"clonebot-test/clonebot:{tag}",
        POSTGRES_IMAGE=f"clonebot-test/postgres:{tag}",
        POSTGRES_PASSWORD=secrets.token_hex(8),
        DOCKER_SOCKET=socket,
        DOCKER_GID=str(os.stat(socket).st_gid),
        CLONEBOT_ROUTER_CONTAINER=f"{project}-haproxy",
        CLONEBOT_BASE_DOMAIN=BASE_DOMAIN,
        CLONEBOT_ADMINS=ADMIN,
        ROUTER_PORT=str(router_port),
        ROUTER_PUBLISH_IP="127.0.0.1",
        CLONEBOT_PORT=str(_free_port()),
        CLONEBOT_PUBLISH_IP="127.0.0.1",
    )
    timings: dict[str, float] = {}
    made = Stack(project, env, router_port, timings)
    started = time.monotonic()
    try:
        await run("bash", str(ROOT / "scripts/build-image.sh"), "--local-base",
                  env=env, within_s=BUILD_S)  # fmt: skip
        timings["build"] = time.monotonic() - started
        started = time.monotonic()
        await made.compose("up", "-d")
        await _until_healthy(made, docker)
        timings["healthy"] = time.monotonic() - started
        yield made
    finally:
        try:
            await made.compose("down", "-v", "--timeout", "5")
        finally:
            await _remove_images(docker, [env["CLONEBOT_IMAGE"], env["POSTGRES_IMAGE"]])
        print(f"\ndeploy timings (s): {json.dumps({k: round(v) for k, v in timings.items()})}")


async def _until_healthy(stack: Stack, docker: DockerClient) -> None:
    ids = (await stack.compose("ps", "-q")).split()
    assert len(ids) == 3, f"expected clonebot, haproxy and postgres, got {ids}"
    deadline = time.monotonic() + HEALTHY_S
    while True:
        states = {}
        for cid in ids:
            info = await docker.inspect_container(cid)
            states[info["Name"].lstrip("/")] = info["State"].get("Health", {}).get("Status")
        if all(s == "healthy" for s in states.values()):
            return
        if time.monotonic() > deadline:
            logs = await stack.compose("logs", "--tail", "20")
            raise AssertionError(f"not healthy within {HEALTHY_S} s: {states}\n{logs}")
        await asyncio.sleep(2)


async def _remove_images(docker: DockerClient, tags: list[str]) -> None:
    for tag in tags:
        if await docker.inspect_image(tag) is not None:
            assert await docker.remove_image(tag), f"{tag} is still used"
    # the stages' images this build left untagged (those of the cache keep their tags)
    for image in await docker.list_images(labels=[STAGE]):
        if not image.get("RepoTags") or image["RepoTags"] == ["<none>:<none>"]:
            await docker.remove_image(image["Id"])


async def test_the_stack_clones_and_moves_traffic_through_its_haproxy(
    make_source: MakeSource, docker: DockerClient, stack: Stack
) -> None:
    # not root: the engine is reached through the socket's group alone
    assert (await stack.compose("exec", "-T", "clonebot", "id", "-un")).strip() == "clonebot"
    # the container has all clonebot needs: the engine, the helper, the stack's HAProxy and
    # database (Slack is off: its checks are skipped)
    checks = json.loads(await stack.clonebot("doctor", "--json"))
    assert [c["check"] for c in checks if not (c["ok"] or c["skipped"])] == [], checks
    assert {c["check"] for c in checks if c["ok"]} >= {"router socket", "database", "helper image"}
    source = (await make_source(web_nodes=1, db_nodes=1)).name
    clone = f"{source}-copy"

    started = time.monotonic()
    made = json.loads(await stack.clonebot("clone", source, clone, "--as", OWNER, "--json"))
    stack.timings["clone"] = time.monotonic() - started
    assert made["state"] == "succeeded", made
    envs = json.loads(await stack.clonebot("envs", "--json"))
    assert {e["name"]: e["cloned_from"] for e in envs}[clone] == source

    # the source's page changes after the copy: what the router serves tells them apart
    await exec_output(docker, f"{source}_web_1", "echo source only > /www/index.html")
    added = await stack.clonebot("domain", "add", source, "shop.test", "--as", OWNER)
    assert "applied to HAProxy" in added, added
    router = f"127.0.0.1:{stack.router_port}"  # the stack's HAProxy, as its users reach it
    assert await page_at(router, "shop.test") == "source only"

    started = time.monotonic()
    swapped = await stack.clonebot("swap", source, clone, "--as", OWNER)
    assert "applied to HAProxy" in swapped, swapped
    assert await page_at(router, "shop.test", within_s=5) == f"{source} web 1"
    stack.timings["swap"] = time.monotonic() - started
    assert await page_at(router, f"{clone}.{BASE_DOMAIN}") == f"{source} web 1"
    assert await page_at(router, f"{source}.{BASE_DOMAIN}") == "source only"

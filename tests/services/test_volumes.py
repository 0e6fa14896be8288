"""The copy helper on its own: a pre-copy, then the final pass over what changed meanwhile."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

import pytest

from services.docker import DockerClient
from services.settings import Settings
from services.volumes import FinalPass, copy_helper, ensure_helper_image, pre_copy
from tests.conftest import in_volume


async def _write(docker: DockerClient, volume: str, script: str) -> None:
    await in_volume(docker, volume, script, write=True)


@pytest.fixture
async def volumes(docker: DockerClient) -> AsyncIterator[tuple[str, str]]:
    tag = secrets.token_hex(3)
    src = await docker.create_volume(name=f"tvol{tag}_src", labels={})
    dst = await docker.create_volume(name=f"tvol{tag}_dst", labels={})
    try:
        yield src, dst
    finally:
        for volume in (src, dst):
            await docker.remove_volume(volume)


@pytest.mark.parametrize("attempt", range(3))  # timing: the same second as the marker, or not
async def test_the_final_pass_brings_over_changes_additions_and_deletions(
    attempt: int, docker: DockerClient, settings: Settings, volumes: tuple[str, str]
) -> None:
    src, dst = volumes
    await _write(
        docker, src,
        "echo old > /v/changed; echo gone > /v/deleted; mkdir -p /v/dir/sub; "
        "echo x > /v/dir/sub/gone-too; echo kept > /v/kept",
    )  # fmt: skip
    await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
    name = f"thelper-{secrets.token_hex(3)}"
    async with copy_helper(
        docker, image=settings.helper_image, name=name, pairs=[(src, dst)], labels={}
    ) as helper:
        await pre_copy(docker, helper=helper, count=1, on_bytes=lambda _: None)
        async with FinalPass(docker, helper=helper, count=1) as final:
            # what the source's writers do between the pre-copy and the freeze
            await _write(
                docker, src,
                "echo new > /v/changed; rm /v/deleted; rm -r /v/dir/sub; echo added > /v/added",
            )  # fmt: skip
            await final.fire()
    listing = await in_volume(docker, dst, "cd /v && find . | sort && cat changed added kept")
    assert listing.split() == [
        ".", "./added", "./changed", "./dir", "./kept", "new", "added", "kept",
    ]  # fmt: skip


async def test_a_helper_stops_at_once_when_the_engine_stops_it(
    docker: DockerClient, settings: Settings, volumes: tuple[str, str]
) -> None:
    """As when its engine is stopped or restarted mid-copy: it has nothing to save. Its sleep,
    PID 1, ignored SIGTERM, and a stopping engine waited 10 s for each helper."""
    await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
    name = f"thelper-{secrets.token_hex(3)}"
    async with copy_helper(
        docker, image=settings.helper_image, name=name, pairs=[volumes], labels={}
    ) as helper:
        started = time.monotonic()
        await docker.stop_container(helper, timeout_s=10)
        assert time.monotonic() - started < 5

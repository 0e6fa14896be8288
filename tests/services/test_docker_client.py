"""The Docker adapter's own promises, on the real engine."""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from services.docker import DockerClient
from tests.conftest import IMAGE


async def test_a_create_cancelled_midway_leaves_no_container(docker: DockerClient) -> None:
    """Cancelled while the engine makes it (a job stopped during a helper's start), the
    container is removed: its caller never learnt its id and could not."""
    prefix = f"t{secrets.token_hex(3)}-cancelled"
    names = [f"{prefix}-{n}" for n in range(12)]
    for n, name in enumerate(names):
        config = {"Image": IMAGE, "Cmd": ["true"], "Labels": {"clonebot.test": prefix}}
        task = asyncio.create_task(docker.create_container(name=name, config=config))
        await asyncio.sleep(0.002 * n)  # before, during and after the engine's answer
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            made = await task
            await docker.remove_container(made)  # it finished before the cancellation
    left = await docker.list_containers(labels=[f"clonebot.test={prefix}"])
    assert [c["Names"] for c in left] == []

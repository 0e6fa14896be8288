"""`clonebot serve` without Slack tokens: the playground's address comes first, and it
listens on 127.0.0.1 whatever CLONEBOT_HTTP_HOST says."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp

from services.settings import Settings
from tests.conftest import _free_port
from tests.playground.conftest import listening


async def test_serve_without_tokens_prints_the_playground_first(settings: Settings) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "DOCKER_HOST": settings.docker_host,
        "DATABASE_URL": settings.database_url,
        "PORT": str(port),
        "CLONEBOT_HTTP_HOST": "0.0.0.0",
    }
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        env.pop(name, None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve", "--no-router",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            first = (await proc.stdout.readline()).decode().strip()
        assert first == f"Playground: http://127.0.0.1:{port}/"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/playground/users") as resp,
        ):
            assert resp.status == 200 and len(await resp.json()) == 4
        assert listening(port) == {"0100007F"}  # 127.0.0.1, though 0.0.0.0 was asked
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0

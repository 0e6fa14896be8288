"""Whether Slack answers clonebot: the ``slack`` check of ``/healthz``."""

from __future__ import annotations

import time
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

AUTH_EVERY_S = 60.0  # auth.test at most once a minute, however often /healthz is asked


class SlackCheck:
    """Over Socket Mode: the socket is connected. Over HTTP: the bot token works (auth.test,
    its last success kept for a minute)."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self.socket: Any = None  # the Socket Mode client, once connected
        self._passed_at = float("-inf")

    async def __call__(self) -> None:
        if self.socket is not None:
            if not await self.socket.is_connected():
                raise ConnectionError("the Socket Mode connection is down")
            return
        if time.monotonic() - self._passed_at < AUTH_EVERY_S:
            return
        await self._client.auth_test()  # raises SlackApiError when the token is refused
        self._passed_at = time.monotonic()

"""The real Slack app played by the playground, in-process, on 127.0.0.1 at a free port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.playground.server import Playground
from bot.playground.serving import running_playground
from services.context import Services, open_services
from services.settings import Settings
from tests.conftest import _free_port

Event = dict[str, Any]


@dataclass
class Stream:
    """The page's event stream, read in the background."""

    events: list[Event] = field(default_factory=list)
    _news: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: Event) -> None:
        self.events.append(event)
        self._news.set()
        self._news = asyncio.Event()

    async def wait_for(self, predicate: Callable[[Event], bool], *, timeout_s: float = 10) -> Event:
        """The first event (already come or to come) that matches."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    found = next((e for e in self.events if predicate(e)), None)
                    if found is not None:
                        return found
                    await self._news.wait()
        except TimeoutError:
            raise AssertionError(f"no such event within {timeout_s} s: {self.events}") from None


@dataclass
class Played:
    svc: Services  # as the app sees them (the playground's settings)
    playground: Playground
    http: aiohttp.ClientSession
    stream: Stream

    @property
    def base(self) -> str:
        return self.playground.base

    @property
    def port(self) -> int:
        return self.playground.port

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        async with self.http.post(f"{self.base}{path}", json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(f"{self.base}{path}") as resp:
            return resp.status, await resp.json()


async def read_stream(http: aiohttp.ClientSession, url: str, stream: Stream) -> None:
    async with http.get(url) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            if line.startswith(b"data: "):
                stream.add(json.loads(line[6:]))


def listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc shows them) listening on ``port``, IPv4 and IPv6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.fixture
async def played(settings: Settings) -> AsyncIterator[Played]:
    """The app and its playground, asked to listen on every interface (it must not)."""
    asked = settings.model_copy(update={"port": _free_port(), "http_host": "0.0.0.0"})
    async with (
        open_services(asked) as svc,
        running_playground(svc) as (app_svc, playground, _),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        stream = Stream()
        reader = asyncio.create_task(
            read_stream(http, f"{playground.base}/playground/stream", stream)
        )
        try:
            yield Played(app_svc, playground, http, stream)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

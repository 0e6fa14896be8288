"""What the page sees: the playground's surfaces as events, replayed to each new page and then
streamed live (Server-Sent Events at ``GET /playground/stream``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)
Event = dict[str, Any]
HEARTBEAT_S = 15.0  # a comment line now and then finds a page that went away
_END = None  # put in a page's queue when the playground stops


class Feed:
    """Messages of every channel in posting order (an update keeps its place), open views and
    Home tabs; every change goes to each connected page."""

    def __init__(self) -> None:
        self._messages: dict[tuple[str, str], Event] = {}
        self._views: dict[str, Event] = {}
        self._homes: dict[str, Event] = {}
        self._pages: set[asyncio.Queue[Event | None]] = set()

    def message(self, event: Event) -> None:
        """A new message, or one replacing the message of the same channel and ts."""
        self._messages[(event["channel"], event["ts"])] = event
        self._publish(event)

    def find(self, *, channel: str, ts: str) -> Event | None:
        return self._messages.get((channel, ts))

    def delete(self, *, channel: str, ts: str) -> None:
        if self._messages.pop((channel, ts), None) is not None:
            self._publish({"kind": "delete", "channel": channel, "ts": ts})

    def view(self, *, view: dict[str, Any], user: str, how: str) -> None:
        event = {"kind": "view", "view_id": view["id"], "user": user, "view": view, "how": how}
        self._views[view["id"]] = event
        self._publish(event)

    def open_view(self, view_id: str) -> Event | None:
        return self._views.get(view_id)

    def close_view(self, view_id: str) -> None:
        if self._views.pop(view_id, None) is not None:
            self._publish({"kind": "view_closed", "view_id": view_id})

    def views_of(self, user: str) -> list[str]:
        return [view_id for view_id, e in self._views.items() if e["user"] == user]

    def home(self, *, user: str, view: dict[str, Any]) -> None:
        self._homes[user] = {"kind": "home", "user": user, "view": view}
        self._publish(self._homes[user])

    def close(self) -> None:
        """End every page's stream (the playground stops)."""
        for queue in self._pages:
            queue.put_nowait(_END)

    def _publish(self, event: Event) -> None:
        for queue in self._pages:
            queue.put_nowait(event)

    def _state(self) -> list[Event]:
        return [*self._messages.values(), *self._views.values(), *self._homes.values()]

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /playground/stream``: the state now, then each change as it happens."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        for event in self._state():
            queue.put_nowait(event)
        self._pages.add(queue)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await response.prepare(request)
            await _send(response, queue)
        except ConnectionError:
            pass  # the page went away
        finally:
            self._pages.discard(queue)
        return response


async def _send(response: web.StreamResponse, queue: asyncio.Queue[Event | None]) -> None:
    while True:
        try:
            async with asyncio.timeout(HEARTBEAT_S):
                event = await queue.get()
        except TimeoutError:
            await response.write(b": still here\n\n")
            continue
        if event is _END:
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return
        await response.write(f"data: {json.dumps(event)}\n\n".encode())

"""A local Slack Web API and Socket Mode server that checks every call against Slack's spec.

The bot under test is pointed at ``api_url`` (SLACK_API_URL). Every call is recorded; a call
Slack would refuse for breaking its contract (unknown method, missing or unknown argument,
Block Kit over its limits, wrong token) is answered as Slack answers it AND recorded as a
violation, which fails the test when the emulator closes: a bot that swallows the error still
fails. Refusals about state (``message_not_found``, ``hash_conflict``) are ordinary answers.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import NamedTuple, TypeVar

import pytest
from aiohttp import WSMsgType, web

from bot.playground.api import content_problems, read_params
from bot.playground.contract import check_arguments, check_blocks, spec_methods
from bot.playground.workspace import APP_ID, HANDLERS, Answer, Params, Workspace
from bot.slack.doctor import SCOPES

T = TypeVar("T")
SOCKET_MODE = "apps.connections.open"


class Call(NamedTuple):
    method: str
    params: Params
    answer: Answer
    at: float = 0.0  # when the emulator answered (time.monotonic())


class Violation(NamedTuple):
    method: str
    problem: str


class SlackEmulator:
    """Slack's Web API on 127.0.0.1 at a free port, for one test.

    ``async with SlackEmulator() as slack:`` starts it; leaving the block fails with an
    AssertionError listing the violations nobody took with ``take_violations()``.
    """

    def __init__(self, *, bot_token: str = "xoxb-test", app_token: str = "xapp-test") -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.workspace = Workspace()
        # what the bot token was granted, sent back on every call as Slack does
        self.scopes: set[str] = set(SCOPES)
        self.calls: list[Call] = []
        self.violations: list[Violation] = []
        self.responses: list[Params] = []  # bodies posted to response_url
        self._faults: dict[str, list[tuple[int, int]]] = {}  # method: (status, Retry-After)
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._acks: dict[str, Params] = {}
        self._news = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base = ""

    @property
    def api_url(self) -> str:
        return f"{self._base}/api/"

    @property
    def response_url(self) -> str:
        """Where slash commands and button clicks tell the bot to send its ``respond()``."""
        return f"{self._base}/response"

    async def __aenter__(self) -> SlackEmulator:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        app.router.add_post("/response", self._response)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self._base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.violations:
            report = "Slack would have refused:\n" + "\n".join(
                f"  {v.method}: {v.problem}" for v in self.violations
            )
            if exc is None:
                raise AssertionError(report)
            exc.add_note(report)

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def take_violations(self) -> list[Violation]:
        """The violations so far, which then no longer fail the test (for tests expecting them)."""
        taken, self.violations = self.violations, []
        return taken

    def rate_limit(self, method: str, *, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next ``times`` calls to ``method`` with HTTP 429 and Retry-After."""
        self.fail(method, *[429] * times, retry_after=retry_after)

    def fail(self, method: str, *statuses: int, retry_after: int = 1) -> None:
        """Answer the next calls to ``method`` with these HTTP statuses, one call each, in
        order, after any failures already asked for: 429 as Slack rate-limits (with
        Retry-After), 5xx as Slack's servers fail (``internal_error``)."""
        assert all(s == 429 or 500 <= s < 600 for s in statuses), statuses
        self._faults.setdefault(method, []).extend((s, retry_after) for s in statuses)

    def faults_left(self, method: str) -> int:
        """How many of the failures asked for ``method`` no call has met yet."""
        return len(self._faults.get(method, []))

    async def wait_for(
        self,
        method: str,
        predicate: Callable[[Params], bool] | None = None,
        *,
        timeout_s: float = 5.0,
    ) -> Call:
        """The first call to ``method`` (made already or to come) that Slack accepted."""

        def found() -> Call | None:
            for call in self.calls_to(method):
                if call.answer.get("ok") and (predicate is None or predicate(call.params)):
                    return call
            return None

        return await self._until(found, timeout_s=timeout_s, what=f"accepted call to {method}")

    async def wait_for_response(
        self, predicate: Callable[[Params], bool] | None = None, *, timeout_s: float = 5.0
    ) -> Params:
        """The first body posted to ``response_url`` (already or to come) that matches."""

        def found() -> Params | None:
            return next((r for r in self.responses if predicate is None or predicate(r)), None)

        return await self._until(found, timeout_s=timeout_s, what="post to response_url")

    async def socket_send(
        self,
        envelope_type: str,
        payload: Params,
        *,
        accepts_response_payload: bool | None = None,
        timeout_s: float = 5.0,
    ) -> Params | None:
        """Send an envelope over Socket Mode; the payload of the client's ack (None if bare).

        ``envelope_type`` is ``slash_commands``, ``interactive`` or ``events_api``.
        """
        ws = await self._until(self._open_socket, timeout_s=timeout_s, what="Socket Mode socket")
        envelope_id = secrets.token_hex(16)
        if accepts_response_payload is None:
            # Slack offers a response payload where the ack can carry one
            answerable = payload.get("type") in ("view_submission", "block_suggestion")
            accepts_response_payload = envelope_type == "slash_commands" or answerable
        envelope = {
            "envelope_id": envelope_id,
            "type": envelope_type,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        }
        if envelope_type == "events_api":
            envelope |= {"retry_attempt": 0, "retry_reason": ""}
        await ws.send_json(envelope)
        ack = await self._until(
            lambda: self._acks.pop(envelope_id, None),
            timeout_s=timeout_s,
            what=f"ack of {envelope_id}",
        )
        return ack.get("payload")

    async def socket_disconnect(
        self, *, reason: str = "refresh_requested", timeout_s: float = 5.0
    ) -> None:
        """Ask the connected client to reconnect, as Slack does every few hours; return once
        it has closed the old socket and opened a new one."""
        old = await self._until(self._open_socket, timeout_s=timeout_s, what="Socket Mode socket")
        await old.send_json({"type": "disconnect", "reason": reason, "debug_info": {"host": "emu"}})
        await self._until(
            lambda: None if old in self._sockets else self._open_socket(),
            timeout_s=timeout_s,
            what="reconnection after disconnect",
        )

    def _open_socket(self) -> web.WebSocketResponse | None:
        return next((ws for ws in reversed(self._sockets) if not ws.closed), None)

    async def _until(self, found: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
        try:
            async with asyncio.timeout(timeout_s):
                while (result := found()) is None:
                    await self._news.wait()
        except TimeoutError:
            last = self.calls[-5:]
            raise AssertionError(f"no {what} within {timeout_s:g} s; last calls: {last}") from None
        return result

    def _notify(self) -> None:
        self._news.set()
        self._news = asyncio.Event()

    def _violate(self, method: str, problems: list[str]) -> None:
        self.violations += [Violation(method, p) for p in problems]

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params, problems = await read_params(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        token = str(params.pop("token", token))
        status, headers, answer = self._answer(method, params, token=token, problems=problems)
        self.calls.append(Call(method, params, answer, time.monotonic()))
        self._notify()
        headers = {"x-oauth-scopes": ",".join(sorted(self.scopes)), **headers}
        return web.json_response(answer, status=status, headers=headers)

    def _answer(
        self, method: str, params: Params, *, token: str, problems: list[str]
    ) -> tuple[int, dict[str, str], Answer]:
        if method not in spec_methods():
            self._violate(method, ["unknown method"])
            return 200, {}, {"ok": False, "error": "unknown_method"}
        if method not in HANDLERS and method != SOCKET_MODE:
            self._violate(method, ["a Slack method this emulator does not answer yet"])
            return 200, {}, {"ok": False, "error": "not_emulated"}
        if token != (self.app_token if method == SOCKET_MODE else self.bot_token):
            self._violate(method, [f"wrong token {token[:5]!r}…"])
            return 200, {}, {"ok": False, "error": "invalid_auth"}
        if faults := self._faults.get(method):
            status, retry_after = faults.pop(0)
            if status == 429:
                headers = {"Retry-After": str(retry_after)}
                return status, headers, {"ok": False, "error": "ratelimited"}
            return status, {}, {"ok": False, "error": "internal_error"}
        problems = problems + check_arguments(method, params)
        if problems:
            self._violate(method, problems)
            answer = {"ok": False, "error": "invalid_arguments"}
            return 200, {}, answer | {"response_metadata": {"messages": problems}}
        error, problems = content_problems(method, params)
        if problems:
            self._violate(method, problems)
            return 200, {}, {"ok": False, "error": error}
        if method == SOCKET_MODE:
            ticket = secrets.token_hex(8)
            self._tickets.add(ticket)
            url = self._base.replace("http", "ws", 1) + f"/socket?ticket={ticket}"
            return 200, {}, {"ok": True, "url": url}
        return 200, {}, self.workspace.answer(method, params)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("ticket") not in self._tickets:
            self._violate(SOCKET_MODE, ["WebSocket URL not issued by apps.connections.open"])
            raise web.HTTPUnauthorized()
        self._tickets.discard(request.query["ticket"])
        ws = web.WebSocketResponse()  # answers the client's pings by itself, as Slack does
        await ws.prepare(request)
        self._sockets.append(ws)
        hello = {"type": "hello", "num_connections": len(self._sockets)}
        await ws.send_json(hello | {"connection_info": {"app_id": APP_ID}})
        self._notify()
        try:
            async for message in ws:  # ends when either side closes the socket
                if message.type == WSMsgType.TEXT:
                    self._on_ack(message.data)
        finally:
            self._sockets.remove(ws)
            self._notify()
        return ws

    def _on_ack(self, data: str) -> None:
        ack = json.loads(data)
        if not isinstance(ack, dict) or "envelope_id" not in ack:
            self._violate(SOCKET_MODE, [f"unexpected Socket Mode message {data[:200]}"])
            return
        self._acks[ack["envelope_id"]] = ack
        self._notify()

    async def _response(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._violate("response_url", check_blocks(body.get("blocks", [])))
        self.responses.append(body)
        self._notify()
        return web.Response(text="ok")


@pytest.fixture(name="slack")
async def slack_fixture() -> AsyncIterator[SlackEmulator]:
    """A Slack emulator; the test fails at teardown if anything broke Slack's contract."""
    async with SlackEmulator() as slack:
        yield slack

"""`clonebot serve` as a real process with Slack at the emulator, and what the tests of the
Slack app, the command line and the proofs do with it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from services.docker import DockerClient
from services.environments import list_environments
from services.settings import Settings
from tests.cli import clonebot, clonebot_env
from tests.conftest import ADMIN, _free_port
from tests.slack.emulator import SlackEmulator
from tests.slack.signing import (
    Reply,
    SlackRequest,
    SlackSender,
    block_actions,
    command_request,
    event_callback,
    event_request,
    interaction_request,
    slash_command,
    view_submission,
)

STRANGER = "USTRANGER1"
TEAM_CHANNEL = "CTEAM0001"
SECRET = "test-signing-secret"


@dataclass
class Bot:
    """A running `clonebot serve` with Slack on, and what talks to it."""

    slack: SlackEmulator
    sender: SlackSender
    settings: Settings
    log: Path
    port: int
    seen: int = 0  # answers given before the last command or click

    async def reply(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first answer to the user (through response_url) that matches, of those given
        since the last command or click: never one an earlier request got."""
        seen = self.slack.responses[: self.seen]
        return await self.slack.wait_for_response(
            lambda r: predicate(r) and not any(r is old for old in seen)
        )

    async def command(self, user: str, command: str, text: str, **signing: Any) -> Reply:
        self.seen = len(self.slack.responses)
        payload = slash_command(
            command=command, user_id=user, text=text, response_url=self.slack.response_url
        )
        return await self.sender.send(command_request(payload), **signing)

    async def click(self, user: str, message: dict[str, Any], action_id: str) -> Reply:
        """``user`` clicks the button ``action_id`` of a message the bot posted."""
        self.seen = len(self.slack.responses)
        payload = block_actions(
            user_id=user,
            message=message,
            action_id=action_id,
            value=button_of(message, action_id)["value"],
            response_url=self.slack.response_url,
        )
        return await self.sender.send(interaction_request(payload))

    async def submit(self, user: str, view: dict[str, Any], values: dict[str, Any]) -> Reply:
        payload = view_submission(user_id=user, view=view, values=values)
        return await self.sender.send(interaction_request(payload))

    async def final_message(self, *, timeout_s: float = 60) -> dict[str, Any]:
        """The first job message that reached its end (it has buttons, or says it failed)."""
        call = await self.slack.wait_for("chat.update", is_final, timeout_s=timeout_s)
        return self.slack.workspace.message(call.params["channel"], call.params["ts"])


def is_final(params: dict[str, Any]) -> bool:
    text = str(params.get("text", ""))
    return text.startswith(":white_check_mark:") or text.startswith(":x:")


def button_of(message: dict[str, Any], action_id: str) -> dict[str, Any]:
    for block in message["blocks"]:
        for element in block.get("elements", []):
            if element.get("action_id") == action_id:
                return element  # type: ignore[no-any-return]
    raise AssertionError(f"no button {action_id} in {message['blocks']}")


def read_log(log: Path) -> str:
    return log.read_text()


async def wait_healthy(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            assert proc.returncode is None, read_log(log)
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"/healthz never answered: {read_log(log)}")


class Serving:
    """`clonebot serve` with Slack at the emulator, from start until its clean stop."""

    def __init__(self, settings: Settings, slack: SlackEmulator, tmp: Path, **extra: str) -> None:
        self.settings, self.slack, self.tmp, self.extra = settings, slack, tmp, extra
        self.port = _free_port()
        self.log = tmp / "serve.log"

    async def __aenter__(self) -> Bot:
        env = (
            clonebot_env(self.settings)
            | {
                "CLONEBOT_ADMINS": ADMIN,
                "SLACK_BOT_TOKEN": self.slack.bot_token,
                "SLACK_SIGNING_SECRET": SECRET,
                "SLACK_API_URL": self.slack.api_url,
                "PORT": str(self.port),
                "CLONEBOT_HTTP_HOST": "127.0.0.1",
                "CLONEBOT_NOTIFY_CHANNEL": TEAM_CHANNEL,
                "CLONEBOT_DM_AFTER": "0",
            }
            | self.extra
        )
        with self.log.open("wb") as out:
            # a process group of its own: one that will not stop is killed with its HAProxy
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "serve",
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        try:
            await wait_healthy(self.port, self.proc, self.log)
        except BaseException:
            await self._stop()  # never left running by a test that failed here
            raise
        url = f"http://127.0.0.1:{self.port}/slack/events"
        self.sender = await SlackSender(url=url, signing_secret=SECRET).__aenter__()
        return Bot(self.slack, self.sender, self.settings, self.log, self.port)

    async def __aexit__(self, *exc: object) -> None:
        await self.sender.__aexit__(None, None, None)
        assert await self._stop() == 0, read_log(self.log)
        assert "Traceback" not in read_log(self.log), read_log(self.log)

    async def _stop(self) -> int:
        """SIGTERM, then after 30 s SIGKILL to its process group: its exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout=30)
        except TimeoutError:
            os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
            raise AssertionError(f"serve did not stop within 30 s: {read_log(self.log)}") from None


async def env_names(settings: Settings) -> set[str]:
    """The environments on the engine."""
    async with DockerClient(settings.docker_host) as docker:
        return {e.name for e in await list_environments(docker)}


def texts(slack: SlackEmulator, method: str, channel: str) -> list[str]:
    """The texts Slack accepted for ``method`` in ``channel``, in order."""
    return [
        str(c.params.get("text", ""))
        for c in slack.calls_to(method)
        if c.params.get("channel") == channel and c.answer.get("ok")
    ]


async def until(check: Callable[[], bool], *, what: str, timeout_s: float = 10) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not check():  # noqa: ASYNC110 (polling what another process does)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s:g} s: {what}") from None


async def until_page(settings: Settings, host: str, page: str, *, within_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while (served := await served_page(settings, host)) != page:
        assert asyncio.get_running_loop().time() < deadline, f"{host} still serves {served!r}"
        await asyncio.sleep(0.05)


def select_element(view: dict[str, Any], block_id: str) -> dict[str, Any]:
    block = next(b for b in view["blocks"] if b.get("block_id") == block_id)
    return block["element"]  # type: ignore[no-any-return]


def event_of(event: dict[str, Any]) -> SlackRequest:
    return event_request(event_callback(event))


def cli(settings: Settings, *args: str) -> str:
    """``clonebot ARGS`` with the test's settings, which must succeed: its output."""
    done = clonebot(*args, settings=settings)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


async def served_page(settings: Settings, host: str, *, within_s: float = 15) -> str:
    """The page the test's router answers for ``host``, waiting for it to come up."""
    return await page_at(settings.router_bind, host, within_s=within_s)


async def page_at(address: str, host: str, *, within_s: float = 15) -> str:
    """What the router at ``address`` answers for ``host``: the first 200's body."""
    last = "no answer"
    async with aiohttp.ClientSession() as session:
        for _ in range(int(within_s * 10)):
            try:
                url = f"http://{address}/"
                async with session.get(url, headers={"Host": host}) as resp:
                    if resp.status == 200:
                        return (await resp.text()).strip()
                    last = f"{resp.status} {(await resp.text()).strip()}"
            except aiohttp.ClientError as exc:
                last = repr(exc)
            await asyncio.sleep(0.1)
    raise AssertionError(f"no 200 for {host} within {within_s} s: {last}")

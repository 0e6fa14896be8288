"""Idle clones asleep and woken by a request: `serve` with a real HAProxy and real Docker
clones, requests sent to 127.0.0.1 only.

CLONEBOT_SLEEP_AFTER is a few seconds here: every clone seen without a request that long
is a candidate, so the ones that must stay up are checked after the idle one slept.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import aiohttp
import pytest

from services.access import Request
from services.context import Services, open_services
from services.docker import DockerClient
from services.environments import PROJECT, get_environment
from services.idle import SleepNotice
from services.jobs import run_job, submit_clone, submit_stop
from services.settings import Settings
from services.sleep import Stopped, stopped_page
from services.supervisor import Tellers, serve
from services.traffic import routing
from services.traffic.haproxy import Backend, RouterFiles, render_config, write_files
from storage import repositories as repo
from tests.conftest import (
    BASE_DOMAIN,
    OWNER,
    WEB,
    _projects,
    _run_node,
    compose_labels,
    remove_projects,
)
from tests.serving import page_at

IDLE_AFTER = timedelta(seconds=3)
T = TypeVar("T")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str


async def _get(bind: str, host: str) -> Answer:
    # a connection of its own: a kept-alive one may be on a worker a reload replaced
    headers = {"Host": host, "Connection": "close"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{bind}/", headers=headers) as resp,
    ):
        return Answer(resp.status, dict(resp.headers), await resp.text())


async def _until(what: str, check: Callable[[], Awaitable[T | None]], *, within_s: float) -> T:
    """``check``'s first answer that is not None, asked every 0.2 s for at most ``within_s``."""
    deadline = asyncio.get_running_loop().time() + within_s
    while (found := await check()) is None:
        assert asyncio.get_running_loop().time() < deadline, f"not within {within_s:g} s: {what}"
        await asyncio.sleep(0.2)
    return found


async def _stopped(svc: Services, name: str) -> str | None:
    async with svc.sessions() as session:
        record = await repo.get_environment(session, name)
    assert record is not None
    return record.stopped


async def _states(svc: Services, name: str) -> set[str]:
    return {n.state for n in (await get_environment(svc.docker, name)).nodes}


async def _clone(svc: Services, source: str, suffix: str) -> str:
    job = await submit_clone(svc, Request(OWNER), source=source, name=f"{source}-{suffix}")
    done = await run_job(svc, job.id)
    assert done.state == "succeeded", done.error
    return done.environment


# the web node listens 5 s after a restart (not after its first start): longer than HAProxy's
# retries wait (a second each, two), so a clone woken must show its waking page until then,
# not HAProxy's bare 503
SLOW_RESTART = "[ -e /tmp/started ] && sleep 5; touch /tmp/started; " + WEB


@pytest.fixture
async def slow_source(docker: DockerClient) -> AsyncIterator[str]:
    """A source with one web node that is slow to listen after a restart; it and its clones
    are removed after."""
    name = f"t{secrets.token_hex(3)}"
    network = f"{name}_default"
    try:
        labels = {PROJECT: name, "com.docker.compose.network": "default"}
        await docker.create_network({"Name": network, "Labels": labels})
        await _run_node(
            docker, name=f"{name}_web_1", network=network, cmd=SLOW_RESTART, host={},
            labels={**compose_labels(name, "web", 1), "clonebot.http.port": "80"},
            extra={"Env": [f"PAGE={name} web 1"]},
        )  # fmt: skip
        yield name
    finally:
        ours = {p for p in await _projects(docker) if p == name or p.startswith(f"{name}-")}
        await remove_projects(docker, ours)


@pytest.fixture
async def sleepy(routed: Settings) -> AsyncIterator[Services]:
    settings = routed.model_copy(update={"sleep_after": IDLE_AFTER})
    async with open_services(settings) as svc:
        yield svc


@contextlib.asynccontextmanager
async def _serving(svc: Services, told: list[SleepNotice]) -> AsyncIterator[None]:
    """``serve`` with its HAProxy, looking every 0.2 s; stopped cleanly after."""
    stop = asyncio.Event()

    async def tell(notice: SleepNotice) -> None:
        told.append(notice)

    task = asyncio.create_task(serve(svc, stop=stop, poll_s=0.2, tell=Tellers(sleep=tell)))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@contextlib.asynccontextmanager
async def _visiting(bind: str, host: str) -> AsyncIterator[list[int]]:
    """A visitor asking for ``host`` every 0.3 s meanwhile: the statuses it got."""
    statuses: list[int] = []

    async def visit() -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                statuses.append((await _get(bind, host)).status)
            await asyncio.sleep(0.3)

    task = asyncio.create_task(visit())
    try:
        yield statuses
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.slow
async def test_an_idle_clone_sleeps_and_a_request_wakes_it_while_busy_ones_stay_up(
    sleepy: Services, slow_source: str
) -> None:
    svc, source = sleepy, slow_source
    bind = svc.settings.router_bind
    idle, visited, serving, asked = [
        await _clone(svc, source, suffix) for suffix in ("idle", "visited", "serving", "asked")
    ]
    await routing.add_domain(svc, Request(OWNER), env=serving, domain=f"{serving}.shop.test")
    stop = await submit_stop(svc, Request(OWNER), name=asked, why=Stopped.ASKED)
    assert (await run_job(svc, stop.id)).state == "succeeded"
    told: list[SleepNotice] = []

    async with _serving(svc, told), _visiting(bind, f"{visited}.{BASE_DOMAIN}") as statuses:
        page = await page_at(bind, f"{idle}.{BASE_DOMAIN}")  # its real page, before it sleeps

        async def asleep() -> bool | None:
            # its record says so as its stop begins; asleep once its nodes are stopped too
            stopped = await _stopped(svc, idle) == Stopped.IDLE
            return (stopped and await _states(svc, idle) == {"exited"}) or None

        await _until(f"{idle} asleep", asleep, within_s=IDLE_AFTER.total_seconds() + 20)
        await asyncio.sleep(1)  # a few more rounds: none of the others is stopped
        for name in (visited, serving, source):
            assert await _states(svc, name) == {"running"}, name
            assert await _stopped(svc, name) is None, name
        assert statuses and set(statuses) == {200}, statuses
        assert [(n.kind, n.environment) for n in told] == [("slept", idle)]

        # once the router has it, its domain answers the waking page: that request wakes it
        async def waking_page() -> Answer | None:
            answer = await _get(bind, f"{idle}.{BASE_DOMAIN}")
            return answer if "waking up" in answer.text else None

        waking = await _until("the waking page", waking_page, within_s=10)
        assert waking.status == 503 and waking.headers.get("Retry-After") == "5", waking
        assert f"<h1>{idle} is waking up</h1>" in waking.text
        assert page not in waking.text  # nothing of the clone's own

        # then the visitor's refreshes: the same page until its real one, nothing between
        async def served() -> Answer | None:
            answer = await _get(bind, f"{idle}.{BASE_DOMAIN}")
            assert answer.status == 200 or answer.text == waking.text, answer
            return answer if answer.status == 200 else None

        assert (await _until("its own page again", served, within_s=30)).text.strip() == page
        assert await _states(svc, idle) == {"running"}
        assert await _stopped(svc, idle) is None
        assert [(n.kind, n.environment) for n in told][1:] == [("woke", idle)]

        # the one its owner put to sleep answers that it is stopped, and stays so
        for _ in range(3):
            stopped = await _get(bind, f"{asked}.{BASE_DOMAIN}")
            assert stopped.status == 503, stopped
            assert f"{asked} is stopped" in stopped.text
            await asyncio.sleep(0.5)
        assert await _states(svc, asked) == {"exited"}
        assert await _stopped(svc, asked) == Stopped.ASKED


async def test_the_waking_page_escapes_the_name_and_haproxy_accepts_its_config(
    routed: Settings,
) -> None:
    page = stopped_page("a<b>&\"c'", Stopped.IDLE)

    assert "a&lt;b&gt;&amp;&quot;c&#x27;" in page.html
    assert "<b>" not in page.html and "'" not in page.html
    assert page.retry_after_s == 5 and 'http-equiv="refresh"' in page.html
    assert routed.router_dir is not None
    files = RouterFiles(routed.router_dir)
    config = render_config(
        files=files, bind=routed.router_bind, backends=[Backend("wake_x", (), page=page)]
    )
    await write_files(files, config=config, hosts={"x.test": "wake_x"})  # haproxy -c passes
    assert "$" not in page.html


def test_sleep_after_takes_the_duration_grammar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLONEBOT_SLEEP_AFTER", "90m")
    assert Settings().sleep_after == timedelta(minutes=90)
    monkeypatch.setenv("CLONEBOT_SLEEP_AFTER", "never")
    assert Settings().sleep_after is None
    monkeypatch.setenv("CLONEBOT_SLEEP_AFTER", "4 hours")
    with pytest.raises(ValueError, match="CLONEBOT_SLEEP_AFTER"):
        Settings()

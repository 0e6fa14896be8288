"""Hostile input at the Slack edge, and what the bot says about itself.

The bot serves in this process (its real aiohttp endpoint on a free port, Slack's Web API the
emulator), so its log is seen by ``caplog``. Requests are signed exactly as Slack signs them:
a correct signature over a body that is not what Slack sends must get a 4xx or an ephemeral
"I could not read that", never a 5xx or a traceback, and change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.health import serving_health
from bot.slack import ids
from bot.slack.app import running_app
from bot.slack.bot import SlackBot
from bot.slack.edge import MAX_BODY
from bot.slack.views import EnvironmentSummary, RouteSummary, home_view, split_modal
from services.context import Services, open_services
from services.settings import Settings
from storage.models import AuditEntry, Job
from tests.conftest import OWNER, _free_port
from tests.slack.emulator import SlackEmulator
from tests.slack.signing import (
    FORM,
    Reply,
    SlackRequest,
    SlackSender,
    block_actions,
    command_request,
    event_callback,
    event_request,
    interaction_request,
    signed_headers,
    slash_command,
    url_verification,
    view_submission,
)

SECRET = f"signing-{secrets.token_hex(8)}"
STRANGER = "USTRANGER1"
PROD = "prod"
HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Edge:
    svc: Services
    bot: SlackBot
    slack: SlackEmulator
    sender: SlackSender
    port: int

    async def send(self, request: SlackRequest, **signing: Any) -> Reply:
        reply = await self.sender.send(request, **signing)
        await self.bot.idle()  # the work after the ack has answered
        return reply

    async def post(self, body: bytes, headers: dict[str, str]) -> Reply:
        """A request as given: its headers are not made by ``signed_headers``."""
        url = f"http://127.0.0.1:{self.port}/slack/events"
        started = time.monotonic()
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=io.BytesIO(body), headers=headers) as resp,
        ):
            text = await resp.text()
        return Reply(resp.status, text, dict(resp.headers), time.monotonic() - started)

    async def nothing_changed(self) -> None:
        """No job, and no action that was allowed in the audit log."""
        async with self.svc.sessions() as session:
            jobs = await session.scalar(select(func.count()).select_from(Job))
            allowed = await session.scalar(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.allowed)
            )
        assert (jobs, allowed) == (0, 0)


def _bot_settings(settings: Settings, slack: SlackEmulator, **extra: Any) -> Settings:
    return settings.model_copy(
        update={
            "slack_bot_token": slack.bot_token,
            "slack_signing_secret": SECRET,
            "slack_api_url": slack.api_url,
            "http_host": "127.0.0.1",
            "port": _free_port(),
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def _edge(settings: Settings, slack: SlackEmulator) -> AsyncIterator[Edge]:
    async with open_services(settings) as svc, running_app(svc) as bot:
        url = f"http://127.0.0.1:{settings.port}/slack/events"
        async with SlackSender(url=url, signing_secret=SECRET) as sender:
            yield Edge(svc, bot, slack, sender, settings.port)


@pytest.fixture
async def edge(settings: Settings, slack: SlackEmulator) -> AsyncIterator[Edge]:
    async with _edge(_bot_settings(settings, slack), slack) as running:
        yield running


def _click(slack: SlackEmulator, *, value: str = f"{PROD}-copy|{PROD}") -> dict[str, Any]:
    """A stranger's click on Swap domains, as Slack sends it for a message of ours."""
    message = {
        "ts": "1700000000.000100",
        "text": "Cloned",
        "blocks": [{"type": "actions", "block_id": "b1", "elements": [{"action_id": ids.SWAP}]}],
    }
    return block_actions(
        user_id=STRANGER, message=message, action_id=ids.SWAP, value=value,
        response_url=slack.response_url,
    )  # fmt: skip


def _submission(callback_id: str = ids.SPLIT_MODAL) -> dict[str, Any]:
    view = {
        "id": "V0123",
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": json.dumps({"env": PROD, "channel": None}),
    }
    values = {
        ids.SPLIT_DOMAIN: {ids.SPLIT_DOMAIN: {"type": "static_select",
                                              "selected_option": {"value": "shop.test"}}},
        ids.SPLIT_OTHER: {ids.SPLIT_OTHER: {"type": "static_select",
                                            "selected_option": {"value": "other"}}},
        ids.SPLIT_WEIGHT: {ids.SPLIT_WEIGHT: {"type": "number_input", "value": "50"}},
        ids.SPLIT_MODE: {ids.SPLIT_MODE: {"type": "radio_buttons",
                                          "selected_option": {"value": "split"}}},
    }  # fmt: skip
    return view_submission(user_id=STRANGER, view=view, values=values)


def _set(payload: Any, path: str, value: Any, *, delete: bool = False) -> Any:
    """``payload`` with the value at a dotted path (``actions.0.value``) replaced or removed."""
    *parents, last = path.split(".")
    node = payload
    for part in parents:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return payload
    if isinstance(node, dict):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    return payload


def _no_traceback(reply: Reply) -> None:
    assert reply.status < 500, (reply.status, reply.text)
    assert "Traceback" not in reply.text and 'File "' not in reply.text, reply.text


def _answers(slack: SlackEmulator) -> list[str]:
    return [str(r.get("text", "")) for r in slack.responses]


# -- hand-picked hostile requests ------------------------------------------------------------


async def test_malformed_but_signed_requests_get_a_4xx_and_change_nothing(edge: Edge) -> None:
    click = _click(edge.slack)
    submission = _submission()
    refused = {
        "user is a number": interaction_request(_set(_click(edge.slack), "user", 5)),
        "actions is a string": interaction_request(_set(_click(edge.slack), "actions", "swap")),
        "no actions": interaction_request(_set(_click(edge.slack), "actions", [])),
        "state of the wrong shape": interaction_request(
            _set(_submission(), "view.state", {"values": ["a", 1]})
        ),
        "values of the wrong shape": interaction_request(
            _set(_submission(), "view.state.values.split_weight", {"split_weight": 50})
        ),
        "payload null": SlackRequest(urlencode({"payload": "null"}).encode(), FORM),
        "payload not JSON": SlackRequest(urlencode({"payload": "{nope"}).encode(), FORM),
        "no user": interaction_request({k: v for k, v in submission.items() if k != "user"}),
        "a shortcut": interaction_request(click | {"type": "shortcut", "callback_id": "x"}),
        "user id of another shape": command_request(
            slash_command(
                command="/env", user_id="<@U1>", text="list", response_url=edge.slack.response_url
            )
        ),
        "an answer sent elsewhere": command_request(
            slash_command(
                command="/env", user_id=OWNER, text="list", response_url="http://127.0.0.2:9/steal"
            )
        ),
        "event null": event_request({"type": "event_callback", "event": None}),
        "body is a JSON list": SlackRequest(b"[1, 2]", "application/json"),
        "nested too deep": SlackRequest(b"[" * 100_000 + b"]" * 100_000, "application/json"),
        "not UTF-8": SlackRequest(b"payload=\xff\xfe\x80", FORM),
        "not a form": SlackRequest(b"%%%=&&&", FORM),
        "a content type Slack never sends": SlackRequest(b"<xml/>", "text/xml"),
    }
    for what, request in refused.items():
        reply = await edge.send(request)
        _no_traceback(reply)
        assert 400 <= reply.status < 500, (what, reply.status, reply.text)
        if reply.status == 400:
            assert reply.json()["error"].startswith("I could not read that"), (what, reply.text)
    assert edge.slack.responses == []  # no answer went anywhere
    await edge.nothing_changed()


async def test_slacks_own_checks_still_pass_the_edge(edge: Edge) -> None:
    """Slack's ssl_check and url_verification are read and answered as Bolt answers them."""
    ssl = await edge.send(SlackRequest(b"ssl_check=1&token=unused", FORM))
    assert ssl.status == 200
    challenge = await edge.send(event_request(url_verification("c" * 40)))
    assert (challenge.status, challenge.json()) == (200, {"challenge": "c" * 40})


async def test_a_button_naming_three_environments_is_answered_i_could_not_read_that(
    edge: Edge,
) -> None:
    for value in ("a|b|c", "", "Not_A_Name", "a||b"):
        reply = await edge.send(interaction_request(_click(edge.slack, value=value)))
        assert reply.status == 200, reply.text
    answers = _answers(edge.slack)
    assert len(answers) == 4
    assert all("I could not read that" in a for a in answers), answers
    assert all(r["response_type"] == "ephemeral" for r in edge.slack.responses)
    await edge.nothing_changed()


async def test_garbled_timestamps_and_oversized_bodies_are_refused_before_reading(
    edge: Edge,
) -> None:
    request = command_request(
        slash_command(
            command="/env", user_id=OWNER, text="list", response_url=edge.slack.response_url
        )
    )
    headers = signed_headers(request, signing_secret=SECRET)
    for garbled in ("abc", "", "1e10", "-1", "١٢٣", "9" * 40, " 1700000000"):
        reply = await edge.post(request.body, headers | {"X-Slack-Request-Timestamp": garbled})
        _no_traceback(reply)
        assert reply.status == 401, (garbled, reply.status)
    # one byte over the limit (1 MiB): 413, whether its length is announced or not
    over = SlackRequest(b"text=" + b"a" * (MAX_BODY - 4), FORM)
    reply = await edge.post(over.body, signed_headers(over, signing_secret=SECRET))
    assert reply.status == 413 and "more than Slack sends" in reply.text

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY // 65536 + 1):
            yield b"a" * 65536

    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{edge.port}/slack/events"
        async with session.post(url, data=chunks(), headers=headers) as resp:
            assert resp.status == 413
    assert edge.slack.responses == []
    await edge.nothing_changed()


async def test_over_socket_mode_a_payload_that_cannot_be_read_is_acked_and_refused(
    settings: Settings, slack: SlackEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    socket = _bot_settings(settings, slack, slack_app_token=slack.app_token)
    async with _edge(socket, slack) as edge:
        for kind, payload in [
            ("interactive", _set(_click(slack), "user", 5)),
            ("interactive", _set(_submission(), "view.state", [])),
            ("slash_commands", {"command": "/env", "user_id": ["U1"], "text": "list"}),
            ("events_api", {"type": "event_callback", "event": "app_home_opened"}),
        ]:
            assert await slack.socket_send(kind, payload, timeout_s=15) is None
        help_asked = slash_command(
            command="/env", user_id=STRANGER, text="help", response_url=slack.response_url
        )
        await slack.socket_send("slash_commands", help_asked, timeout_s=15)
        await edge.bot.idle()
        assert [a[:21] for a in _answers(slack)] == ["*/env* commands:\n`/en"]
        await edge.nothing_changed()
    refused = [r.getMessage() for r in caplog.records if "refused (socket)" in r.getMessage()]
    assert len(refused) == 4, refused
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- property-based: whatever is sent, signed ------------------------------------------------


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)


_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    _nested,
    max_leaves=8,
)
_CLICK_PATHS = [
    "type", "user", "user.id", "actions", "actions.0", "actions.0.value", "actions.0.action_id",
    "actions.0.block_id", "channel", "channel.id", "trigger_id", "team", "container", "message",
    "response_url", "enterprise", "authorizations", "is_enterprise_install",
]  # fmt: skip
_VIEW_PATHS = [
    "type", "user", "user.id", "view", "view.callback_id", "view.private_metadata",
    "view.state", "view.state.values", "view.state.values.split_weight",
    "view.state.values.split_weight.split_weight", "view.state.values.split_mode.split_mode",
    "view.state.values.split_other.split_other.selected_option", "view.type", "team",
    "trigger_id", "response_urls", "view.app_installed_team_id", "enterprise",
]  # fmt: skip
_TYPES = st.sampled_from(
    ["block_actions", "view_submission", "view_closed", "shortcut", "message_action",
     "block_suggestion", "interactive_message", "dialog_submission"]
)  # fmt: skip


def _mutations(paths: list[str]) -> st.SearchStrategy[list[tuple[str, Any, bool]]]:
    change = st.tuples(st.sampled_from(paths), _junk | _TYPES, st.booleans())
    return st.lists(change, min_size=1, max_size=3)


def _mutated(payload: dict[str, Any], changes: list[tuple[str, Any, bool]]) -> Any:
    for path, value, delete in changes:
        payload = _set(payload, path, value, delete=delete)
    return payload


async def _no_harm(edge: Edge, reply: Reply) -> None:
    _no_traceback(reply)
    for answer in _answers(edge.slack):
        assert "Traceback" not in answer and "failed on clonebot's side" not in answer, answer
    await edge.nothing_changed()


@HYPOTHESIS
@given(changes=_mutations(_CLICK_PATHS), whole=st.none() | _junk)
async def test_any_click_payload_is_refused_or_answered(
    edge: Edge, changes: list[tuple[str, Any, bool]], whole: Any
) -> None:
    payload = whole if whole is not None else _mutated(_click(edge.slack), changes)
    await _no_harm(edge, await edge.send(interaction_request(payload)))


@HYPOTHESIS
@given(
    changes=_mutations(_VIEW_PATHS), callback=st.sampled_from([ids.SPLIT_MODAL, ids.CLONE_MODAL])
)
async def test_any_view_submission_is_refused_or_answered(
    edge: Edge, changes: list[tuple[str, Any, bool]], callback: str
) -> None:
    payload = _mutated(_submission(callback), changes)
    reply = await edge.send(interaction_request(payload))
    await _no_harm(edge, reply)
    if reply.status == 200 and reply.text:
        assert reply.json()["response_action"] == "errors", reply.text


_WORDS = st.sampled_from(
    ["list", "info", "delete", "rename", "refresh", "share", "owner", "adopt", "domain", "add",
     "remove", "swap", "split", "failover", "notify", "help", PROD, "sticky", "=", "a=50",
     "b=-1", "x=1e9", "<@U1|x>", "<#C1|c>", "viewer", "operator", "shop.test", "*", "`"]
)  # fmt: skip


@HYPOTHESIS
@given(
    command=st.sampled_from(["/clone", "/env", "/other"]),
    words=st.lists(_WORDS | st.text(max_size=15), max_size=5),
    user=st.sampled_from([STRANGER, OWNER]) | st.text(max_size=12),
)
async def test_any_slash_command_text_is_refused_or_answered(
    edge: Edge, command: str, words: list[str], user: str
) -> None:
    if command == "/clone" and words:  # the owner's /clone would clone: a stranger's may not
        user = STRANGER
    payload = slash_command(
        command=command, user_id=user, text=" ".join(words), response_url=edge.slack.response_url
    )
    await _no_harm(edge, await edge.send(command_request(payload)))
    edge.slack.take_violations()  # a modal over Slack's limits is the emulator's to judge


@HYPOTHESIS
@given(event=_junk, kind=st.sampled_from(["event_callback", "url_verification", "other"]))
async def test_any_event_is_refused_or_answered(edge: Edge, event: Any, kind: str) -> None:
    body = event_callback({"type": "app_home_opened", "user": STRANGER}) | {"type": kind}
    body["event"] = event if isinstance(event, dict) else body["event"]
    body["challenge"] = event
    await _no_harm(edge, await edge.send(event_request(body)))


# -- logs and /healthz -----------------------------------------------------------------------


async def test_refused_requests_leave_no_body_token_or_secret_in_the_log(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = f"marker{secrets.token_hex(6)}"
    payload = slash_command(
        command="/env", user_id=OWNER, text=f"list {marker}", response_url=edge.slack.response_url
    )
    request = command_request(payload)
    forged = await edge.send(request, forged=True)
    stale = await edge.send(request, age_s=6 * 60)
    assert (forged.status, stale.status) == (401, 401)
    assert forged.json() == {"error": "invalid request"}
    malformed = await edge.send(interaction_request(_set(_click(edge.slack), "user", marker)))
    assert malformed.status == 400 and marker not in malformed.text
    # and one that is taken, answered through Slack's Web API: Bolt's and slack_sdk's own
    # lines, to DEBUG, hold no token either
    accepted = await edge.send(request)
    assert accepted.status == 200 and _answers(edge.slack)
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "Slack request refused (401): its signature is wrong" in logged
    assert "Slack request refused (401): its timestamp is more than five minutes away" in logged
    for secret in (marker, SECRET, edge.slack.bot_token, request.body.decode()[:40]):
        assert secret not in logged, secret
    await edge.nothing_changed()


async def test_healthz_says_which_check_fails_and_nothing_more(
    settings: Settings, slack: SlackEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    async with _edge(_bot_settings(settings, slack), slack) as edge:
        healthy = await _healthz(edge.port)
    assert healthy == (
        200,
        {"ok": True, "checks": {"docker": "ok", "database": "ok", "slack": "ok"}},
    )

    # Docker gone, a bot token Slack refuses: which fails, never why
    caplog.set_level(logging.INFO)
    broken = _bot_settings(settings, slack, docker_host="unix:///nonexistent/docker.sock")
    broken = broken.model_copy(update={"slack_bot_token": "xoxb-refused-token"})
    async with _edge(broken, slack) as edge:
        status, health = await _healthz(edge.port)
        text = json.dumps(health)
    slack.take_violations()  # the refused token, as the emulator saw it
    assert (status, health) == (
        503, {"ok": False, "checks": {"docker": "failing", "database": "ok", "slack": "failing"}}
    )  # fmt: skip
    assert "nonexistent" not in text and "xoxb" not in text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "health check docker failing" in logged and "health check slack failing" in logged
    assert "xoxb-refused-token" not in logged

    # Slack off: the same answer, "slack": "off"
    off = settings.model_copy(update={"http_host": "127.0.0.1", "port": _free_port()})
    async with open_services(off) as svc, serving_health(svc):
        assert await _healthz(off.port) == (
            200, {"ok": True, "checks": {"docker": "ok", "database": "ok", "slack": "off"}}
        )  # fmt: skip


async def test_serve_without_slack_answers_healthz_with_slack_off(settings: Settings) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "DOCKER_HOST": settings.docker_host,
        "DATABASE_URL": settings.database_url,
        "PORT": str(port),
        "CLONEBOT_HTTP_HOST": "127.0.0.1",
    }
    env.pop("SLACK_BOT_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve", "--no-router",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        for _ in range(300):  # 30 s at most, for a loaded machine
            with contextlib.suppress(aiohttp.ClientError):
                answer = await _healthz(port)
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("serve never answered /healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    slack_off = {"docker": "ok", "database": "ok", "slack": "off"}
    assert answer == (200, {"ok": True, "checks": slack_off})
    assert proc.returncode == 0 and b"Traceback" not in output, output


async def _healthz(port: int) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        return resp.status, await resp.json()


def test_the_largest_request_our_surfaces_cause_is_far_under_the_limit() -> None:
    """Slack sends back what we built: the Home view (in app_home_opened), a modal (in a
    view_submission), a message (in block_actions, its sections cut at 3,000 characters).
    The largest Home and split form we can build, every name and list at its limit, stay
    under a quarter of MAX_BODY (measured: 127 KB and 60 KB)."""
    name = "e" * 62
    domains = [f"{'d' * 60}-{i}.example.com" for i in range(100)]
    environments = [
        EnvironmentSummary(name=f"{name}{i % 10}", owner=OWNER, role="owner",
                           layers={f"layer{j}": 9 for j in range(40)}, cloned_from=name)
        for i in range(200)
    ]  # fmt: skip
    routes = [RouteSummary(d, "split", f"{name}{i % 10}", name, 50, True) for i, d in
              enumerate(domains)]  # fmt: skip
    home = home_view(
        user=OWNER, environments=environments, domains={e.name: domains for e in environments},
        routes=routes, jobs=[], base_domain="b" * 60 + ".example",
    ).to_dict()  # fmt: skip
    event = event_callback({"type": "app_home_opened", "user": OWNER, "tab": "home", "view": home})
    split = split_modal(name, others=[f"{name}{i}" for i in range(100)], domains=domains)
    submitted = view_submission(user_id=OWNER, view=split.to_dict(), values={})
    sizes = {
        "home event": len(event_request(event).body),
        "split submission": len(interaction_request(submitted).body),
    }
    assert all(size < MAX_BODY // 4 for size in sizes.values()), sizes

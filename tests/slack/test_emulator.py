"""The Slack emulator answers the real slack_sdk/slack_bolt clients as Slack does, and refuses
what Slack would refuse; the signed requests pass bolt's and slack_sdk's verification."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    InputBlock,
    PlainTextInputElement,
    SectionBlock,
)
from slack_sdk.models.views import View
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from bot.playground.contract import check_arguments, check_blocks, check_view
from tests.slack.emulator import SOCKET_MODE, SlackEmulator, Violation, slack_fixture  # noqa: F401
from tests.slack.signing import (
    CHANNEL_ID,
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

USER = "UALICE1"
SECRET = "test-signing-secret"


def web_client(slack: SlackEmulator, **options: Any) -> AsyncWebClient:
    return AsyncWebClient(base_url=slack.api_url, token=slack.bot_token, **options)


async def test_a_message_is_posted_then_updated_in_place(slack: SlackEmulator) -> None:
    client = web_client(slack)
    posted = await client.chat_postMessage(
        channel=CHANNEL_ID, text="cloning prod", blocks=[SectionBlock(text="*prod* → copy: 10 %")]
    )
    ts = posted["ts"]
    await client.chat_update(
        channel=CHANNEL_ID, ts=ts, text="done", blocks=[SectionBlock(text="*prod* → copy: done")]
    )

    message = slack.workspace.message(CHANNEL_ID, ts)
    assert (message["text"], message["blocks"][0]["text"]["text"]) == (
        "done",
        "*prod* → copy: done",
    )
    assert [c.params["ts"] for c in slack.calls_to("chat.update")] == [ts]
    link = await client.chat_getPermalink(channel=CHANNEL_ID, message_ts=ts)
    assert link["permalink"].endswith(f"/archives/{CHANNEL_ID}/p{ts.replace('.', '')}")
    await client.chat_delete(channel=CHANNEL_ID, ts=ts)
    with pytest.raises(SlackApiError) as refused:
        await client.chat_update(channel=CHANNEL_ID, ts=ts, text="too late")
    assert refused.value.response["error"] == "message_not_found"


async def test_a_form_encoded_call_has_its_json_arguments_decoded(slack: SlackEmulator) -> None:
    blocks = '[{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}]'
    data = {"channel": CHANNEL_ID, "text": "hi", "blocks": blocks}
    posted = await web_client(slack).api_call("chat.postMessage", data=data)

    assert slack.workspace.message(CHANNEL_ID, posted["ts"])["blocks"][0]["text"]["text"] == "hi"


async def test_modals_and_the_home_tab_are_kept_by_id(slack: SlackEmulator) -> None:
    client = web_client(slack)
    modal = View(type="modal", title="Split traffic", blocks=[SectionBlock(text="weight")])
    opened = (await client.views_open(trigger_id="1.2.abc", view=modal))["view"]
    renamed = View(type="modal", title="Split", blocks=[SectionBlock(text="weight")])
    updated = await client.views_update(view_id=opened["id"], hash=opened["hash"], view=renamed)
    assert slack.workspace.views[opened["id"]]["title"]["text"] == "Split"
    with pytest.raises(SlackApiError) as stale:
        await client.views_update(view_id=opened["id"], hash=opened["hash"], view=modal)
    assert stale.value.response["error"] == "hash_conflict"
    assert updated["view"]["hash"] != opened["hash"]

    home = View(type="home", blocks=[SectionBlock(text="your environments")])
    await client.views_publish(user_id=USER, view=home)
    published = slack.workspace.home(USER)
    assert published is not None
    assert published["blocks"][0]["text"]["text"] == "your environments"


async def test_a_dm_is_opened_and_people_are_looked_up(slack: SlackEmulator) -> None:
    client = web_client(slack)
    dm = (await client.conversations_open(users=USER))["channel"]["id"]
    posted = await client.chat_postMessage(channel=USER, text="your clone is ready")

    assert posted["channel"] == dm
    assert (await client.conversations_info(channel=dm))["channel"]["user"] == USER
    assert (await client.users_info(user=USER))["user"]["id"] == USER
    assert (await client.auth_test())["user_id"] == "U0CLONEBOT"


async def test_an_unknown_method_is_refused_and_recorded(slack: SlackEmulator) -> None:
    with pytest.raises(SlackApiError) as refused:
        await web_client(slack).api_call("chat.postMessages", json={"channel": CHANNEL_ID})

    assert refused.value.response["error"] == "unknown_method"
    assert slack.take_violations() == [Violation("chat.postMessages", "unknown method")]


async def test_a_missing_required_argument_is_refused_and_recorded(slack: SlackEmulator) -> None:
    with pytest.raises(SlackApiError) as refused:
        await web_client(slack).api_call("chat.update", json={"channel": CHANNEL_ID, "text": "x"})

    assert refused.value.response["error"] == "invalid_arguments"
    assert slack.take_violations() == [Violation("chat.update", "missing required argument ts")]


async def test_an_unknown_argument_is_refused_and_recorded(slack: SlackEmulator) -> None:
    with pytest.raises(SlackApiError):
        await web_client(slack).chat_postMessage(channel=CHANNEL_ID, text="x", colour="red")

    assert slack.take_violations() == [Violation("chat.postMessage", "unknown argument colour")]
    assert slack.workspace.messages == {}


def test_the_checker_reads_the_spec() -> None:
    assert check_arguments("chat.postMessage", {"channel": "C1", "text": "x"}) == []
    assert check_arguments("views.open", {"view": {}}) == ["missing required argument trigger_id"]
    assert check_arguments("chat.update", {"channel": "C", "ts": "1", "team_id": "T"}) == []
    assert check_arguments("apps.connections.open", {}) == []
    assert check_arguments("chat.startStream", {}) == ["unknown method"]


def test_blocks_over_slacks_limits_are_refused() -> None:
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "x"}}
    assert check_blocks([section] * 50) == []
    assert check_blocks([section] * 51) == ["51 blocks, more than 50"]
    assert check_blocks({"type": "section"}) == ["blocks is not a list of objects with a type"]
    assert check_blocks([{"text": "no type"}]) == ["blocks is not a list of objects with a type"]
    long = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}
    assert check_blocks([long]) == ["blocks[0] (section): text is 3001 characters, more than 3000"]
    assert check_view({"type": "modal", "blocks": [section] * 100}) == ["a modal needs a title"]


async def test_blocks_over_the_limit_are_refused_and_recorded(slack: SlackEmulator) -> None:
    blocks = [{"type": "divider"}] * 51
    with pytest.raises(SlackApiError) as refused:
        await web_client(slack).chat_postMessage(channel=CHANNEL_ID, text="x", blocks=blocks)

    assert refused.value.response["error"] == "invalid_blocks"
    assert slack.take_violations() == [Violation("chat.postMessage", "51 blocks, more than 50")]


async def test_a_wrong_token_is_refused_and_recorded(slack: SlackEmulator) -> None:
    app_client = AsyncWebClient(base_url=slack.api_url, token=slack.app_token)
    with pytest.raises(SlackApiError) as refused:
        await app_client.chat_postMessage(channel=CHANNEL_ID, text="x")
    with pytest.raises(SlackApiError):
        await web_client(slack).apps_connections_open(app_token=slack.bot_token)

    assert refused.value.response["error"] == "invalid_auth"
    assert [v.method for v in slack.take_violations()] == ["chat.postMessage", SOCKET_MODE]


async def test_violations_fail_the_test_when_the_emulator_closes() -> None:
    with pytest.raises(AssertionError, match=re.escape("chat.postMessages: unknown method")):
        async with SlackEmulator() as slack:
            with pytest.raises(SlackApiError):
                await web_client(slack).api_call("chat.postMessages")


async def test_a_rate_limited_call_gets_429_with_retry_after(slack: SlackEmulator) -> None:
    posted = await web_client(slack).chat_postMessage(channel=CHANNEL_ID, text="10 %")
    slack.rate_limit("chat.update", times=1, retry_after=1)

    with pytest.raises(SlackApiError) as limited:
        await web_client(slack).chat_update(channel=CHANNEL_ID, ts=posted["ts"], text="20 %")
    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["Retry-After"] == "1"
    assert slack.workspace.message(CHANNEL_ID, posted["ts"])["text"] == "10 %"

    slack.rate_limit("chat.update", times=1, retry_after=1)
    patient = web_client(slack, retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)])
    started = time.monotonic()
    await patient.chat_update(channel=CHANNEL_ID, ts=posted["ts"], text="30 %")
    assert time.monotonic() - started >= 1, "the client waited as long as Retry-After said"
    assert slack.workspace.message(CHANNEL_ID, posted["ts"])["text"] == "30 %"
    assert [c.answer["ok"] for c in slack.calls_to("chat.update")] == [False, False, True]


async def test_wait_for_sees_a_call_made_later_and_gives_up_in_time(slack: SlackEmulator) -> None:
    async def post_soon() -> None:
        await asyncio.sleep(0.1)
        await web_client(slack).chat_postMessage(channel=CHANNEL_ID, text="done")

    task = asyncio.create_task(post_soon())
    call = await slack.wait_for("chat.postMessage", lambda p: p["text"] == "done")
    await task
    assert call.params["channel"] == CHANNEL_ID
    with pytest.raises(
        AssertionError, match=re.escape("no accepted call to chat.update within 0.1 s")
    ):
        await slack.wait_for("chat.update", timeout_s=0.1)


async def test_socket_mode_delivers_an_envelope_and_returns_the_ack(slack: SlackEmulator) -> None:
    client = SocketModeClient(app_token=slack.app_token, web_client=web_client(slack))
    seen: list[str] = []

    async def on_message(_client: object, message: dict[str, Any], _raw: str | None) -> None:
        seen.append(message.get("type", ""))

    async def on_request(client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        answer = {"text": f"cloning {request.payload['text']}"}
        await client.send_socket_mode_response(SocketModeResponse(request.envelope_id, answer))

    client.message_listeners.append(on_message)
    client.socket_mode_request_listeners.append(on_request)
    try:
        await client.connect()
        payload = slash_command(
            command="/clone", text="prod", user_id=USER, response_url=slack.response_url
        )
        ack = await slack.socket_send("slash_commands", payload)
        assert ack == {"text": "cloning prod"}
        assert seen[:2] == ["hello", "slash_commands"]

        await slack.socket_disconnect()
        assert len(slack.calls_to(SOCKET_MODE)) == 2, "a new URL for the new socket"
        assert await slack.socket_send("slash_commands", payload) == {"text": "cloning prod"}
    finally:
        await client.close()


@pytest.fixture
async def bolt(slack: SlackEmulator) -> AsyncIterator[tuple[AsyncApp, SlackSender]]:
    """A bolt app on the emulator, served over HTTP, and a sender of signed requests to it."""
    app = AsyncApp(client=web_client(slack), signing_secret=SECRET)
    runner = web.AppRunner(app.web_app(path="/slack/events"), shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/slack/events"
    try:
        async with SlackSender(url=url, signing_secret=SECRET) as sender:
            yield app, sender
    finally:
        await runner.cleanup()


async def test_bolt_takes_a_signed_slash_command(
    slack: SlackEmulator, bolt: tuple[AsyncApp, SlackSender]
) -> None:
    app, sender = bolt

    @app.command("/clone")
    async def clone(ack, respond, client, command) -> None:
        await ack(f"cloning {command['text']}")
        await respond("started")
        button = ButtonElement(text="Swap domains", action_id="swap", value="prod:copy")
        blocks = [SectionBlock(text="done"), ActionsBlock(elements=[button])]
        await client.chat_postMessage(channel=command["channel_id"], text="done", blocks=blocks)

    payload = slash_command(
        command="/clone", text="prod", user_id=USER, response_url=slack.response_url
    )
    reply = await sender.send(command_request(payload))

    assert (reply.status, reply.text) == (200, "cloning prod")
    assert reply.elapsed_s < 3
    assert (await slack.wait_for_response())["text"] == "started"
    posted = await slack.wait_for("chat.postMessage")
    assert posted.params["team_id"] == "T0CLONEBOT", "bolt sends team_id; the spec lacks it"
    for forgery in ({"forged": True}, {"age_s": 6 * 60}):
        assert (await sender.send(command_request(payload), **forgery)).status == 401


async def test_bolt_takes_a_click_a_submission_and_events(
    slack: SlackEmulator, bolt: tuple[AsyncApp, SlackSender]
) -> None:
    app, sender = bolt
    clicked: list[str] = []
    submitted: list[dict[str, Any]] = []

    @app.action("swap")
    async def swap(ack, action) -> None:
        await ack()
        clicked.append(action["value"])

    @app.view("split")
    async def split(ack, view) -> None:
        await ack()
        submitted.append(view["state"]["values"])

    @app.event("app_home_opened")
    async def home(client, event) -> None:
        home = View(type="home", blocks=[SectionBlock(text="your environments")])
        await client.views_publish(user_id=event["user"], view=home)

    button = ButtonElement(text="Swap domains", action_id="swap", value="prod:copy")
    blocks = [ActionsBlock(block_id="b1", elements=[button])]
    posted = await web_client(slack).chat_postMessage(channel=CHANNEL_ID, text="x", blocks=blocks)
    message = slack.workspace.message(CHANNEL_ID, posted["ts"])
    click = block_actions(
        user_id=USER,
        message=message,
        action_id="swap",
        value="prod:copy",
        response_url=slack.response_url,
    )
    assert (await sender.send(interaction_request(click))).status == 200
    assert clicked == ["prod:copy"]

    weight = InputBlock(
        block_id="weight", label="Weight", element=PlainTextInputElement(action_id="weight")
    )
    modal = View(type="modal", callback_id="split", title="Split", submit="Apply", blocks=[weight])
    view = (await web_client(slack).views_open(trigger_id="1.2.3", view=modal))["view"]
    values = {"weight": {"weight": {"type": "plain_text_input", "value": "30"}}}
    submission = view_submission(user_id=USER, view=view, values=values)
    assert (await sender.send(interaction_request(submission))).status == 200
    assert submitted == [values]

    opened = event_callback({"type": "app_home_opened", "user": USER, "tab": "home"})
    assert (await sender.send(event_request(opened), retry_num=1)).status == 200
    await slack.wait_for("views.publish", lambda p: p["user_id"] == USER)
    challenge = await sender.send(event_request(url_verification("abc")))
    assert challenge.json() == {"challenge": "abc"}


def test_the_signature_is_what_slack_sdk_verifies() -> None:
    verifier = SignatureVerifier(SECRET)
    request = command_request(slash_command(command="/env", user_id=USER, response_url="x"))

    def verified(**signing: Any) -> bool:
        headers = signed_headers(request, signing_secret=SECRET, **signing)
        return verifier.is_valid_request(request.body, headers)

    assert verified()
    assert not verified(forged=True)
    assert not verified(age_s=6 * 60)
    retried = signed_headers(request, signing_secret=SECRET, retry_num=2)
    assert (retried["X-Slack-Retry-Num"], retried["X-Slack-Retry-Reason"]) == ("2", "http_timeout")
    assert verifier.is_valid_request(request.body, retried)

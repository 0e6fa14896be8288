"""The playground plays Slack for the real app: the page's requests go through /slack/events
signed as Slack signs them, and what the bot does comes back on the stream."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from bot.playground.people import ADMIN, CHANNEL, OWNER, STRANGER, TEAM_CHANNEL
from bot.slack import ids
from tests.conftest import BASE_DOMAIN, MakeSource
from tests.playground.conftest import Played, Stream, listening, read_stream

PEOPLE = [
    {"id": "U0OWNER01", "name": "olivia", "role": "owner"},
    {"id": "U0COLLAB01", "name": "carlos", "role": "collaborator"},
    {"id": "U0STRANGR1", "name": "sam", "role": "stranger"},
    {"id": "U0ADMIN001", "name": "ada", "role": "admin"},
]


async def test_the_page_users_health_and_loopback_only(played: Played) -> None:
    assert await played.get("/playground/users") == (200, PEOPLE)
    assert await played.get("/healthz") == (
        200, {"ok": True, "checks": {"docker": "ok", "database": "ok", "slack": "off"}}
    )  # fmt: skip
    async with played.http.get(f"{played.base}/metrics") as resp:
        assert resp.status == 200 and "clonebot_slack_requests_total" in await resp.text()
    async with played.http.get(f"{played.base}/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
    # CLONEBOT_HTTP_HOST was 0.0.0.0: the playground listens on 127.0.0.1 all the same
    assert listening(played.svc.settings.port) == {"0100007F"}
    assert ADMIN in played.svc.settings.admins


async def test_env_list_answers_the_user_alone(played: Played) -> None:
    answer = await played.post(
        "/playground/command", {"user": OWNER, "channel": CHANNEL, "text": "/env list"}
    )
    assert answer == {"ok": True}
    event = await played.stream.wait_for(lambda e: e["kind"] == "message")
    assert event["ephemeral_to"] == OWNER and event["channel"] == CHANNEL
    assert "environment" in event["text"].lower() and isinstance(event["blocks"], list)

    unknown = {"user": OWNER, "channel": CHANNEL, "text": "/deploy prod"}
    assert await played.post("/playground/command", unknown) == {
        "ok": False, "error": "/deploy is not a command here"
    }  # fmt: skip


async def test_clone_form_shows_a_bad_name_under_its_field(
    played: Played, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, seed_kib=1)
    await played.post("/playground/command", {"user": ADMIN, "channel": CHANNEL, "text": "/clone"})
    # opened at once, saying it is looking, then filled in place (bot.slack.modals)
    opened = await played.stream.wait_for(lambda e: e["kind"] == "view")
    assert opened["user"] == ADMIN and opened["how"] == "open"
    filled = await played.stream.wait_for(lambda e: e["kind"] == "view" and e["how"] == "update")
    view = filled["view"]
    assert filled["user"] == ADMIN and view["id"] == opened["view"]["id"]
    assert view["type"] == "modal" and view["callback_id"] == ids.CLONE_MODAL
    assert [b["block_id"] for b in view["blocks"] if b["type"] == "input"][:2] == [
        ids.CLONE_SOURCE, ids.CLONE_NAME
    ]  # fmt: skip

    values = {
        ids.CLONE_SOURCE: {ids.CLONE_SOURCE: {"type": "static_select",
                                              "selected_option": {"value": source.name}}},
        ids.CLONE_NAME: {ids.CLONE_NAME: {"type": "plain_text_input", "value": "Bad Name!"}},
    }  # fmt: skip
    answer = await played.post(
        "/playground/submit", {"user": ADMIN, "view_id": view["id"], "values": values}
    )
    assert answer["ok"] and answer["response_action"] == "errors"
    assert set(answer["errors"]) == {ids.CLONE_NAME}
    assert played.playground.feed.open_view(view["id"]) is not None  # the modal stays open

    # the page links each site through the router, on its port
    status, links = await played.get("/playground/links")
    router = played.svc.settings.router_bind  # 127.0.0.1 at a port of the test's own
    assert status == 200 and links["router"] == f"http://{router}"
    port = router.rpartition(":")[2]
    assert {"name": source.name, "url": f"http://{source.name}.{BASE_DOMAIN}:{port}/",
            "domains": []} in links["environments"]  # fmt: skip


async def test_a_page_that_connects_late_sees_what_was_said(played: Played) -> None:
    await played.post("/playground/command", {"user": OWNER, "text": "/env help"})
    said = await played.stream.wait_for(lambda e: e["kind"] == "message")
    late = Stream()
    reader = asyncio.create_task(read_stream(played.http, f"{played.base}/playground/stream", late))
    try:
        assert await late.wait_for(lambda e: e["kind"] == "message") == said
    finally:
        reader.cancel()


async def test_a_strangers_click_is_refused_to_them_alone(
    played: Played, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, seed_kib=1)
    token = played.svc.settings.slack_bot_token
    blocks = [{"type": "actions", "block_id": "b1", "elements": [
        {"type": "button", "action_id": ids.DELETE, "value": source.name,
         "text": {"type": "plain_text", "text": "Delete"}},
    ]}]  # fmt: skip
    async with played.http.post(
        f"{played.base}/api/chat.postMessage",
        json={"channel": CHANNEL, "text": "Cloned", "blocks": blocks},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        posted = await resp.json()
    assert posted["ok"], posted
    message = await played.stream.wait_for(lambda e: e.get("ts") == posted["ts"])
    assert message["ephemeral_to"] is None and message["blocks"][0]["block_id"] == "b1"

    click = {
        "user": STRANGER, "channel": CHANNEL, "message_ts": posted["ts"], "view_id": None,
        "action": {"type": "button", "action_id": ids.DELETE, "block_id": "b1",
                   "value": source.name},
    }  # fmt: skip
    assert await played.post("/playground/action", click) == {"ok": True}
    refused = await played.stream.wait_for(lambda e: e.get("ephemeral_to") == STRANGER)
    assert "belongs to" in refused["text"], refused
    assert played.playground.feed.find(channel=CHANNEL, ts=posted["ts"]) == message


async def test_a_call_slack_would_refuse_is_refused_and_logged(
    played: Played, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    token = played.svc.settings.slack_bot_token
    async with played.http.post(
        f"{played.base}/api/chat.postMessage",
        json={"channel": CHANNEL, "text": "hi", "colour": "red"},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert (resp.status, await resp.json()) == (
            200, {"ok": False, "error": "invalid_arguments",
                  "response_metadata": {"messages": ["unknown argument colour"]}},
        )  # fmt: skip
    async with played.http.post(
        f"{played.base}/api/auth.test", headers={"Authorization": "Bearer xoxb-someone-else"}
    ) as resp:
        assert await resp.json() == {"ok": False, "error": "invalid_auth"}
    logged = [r.getMessage() for r in caplog.records]
    assert any("unknown argument colour" in m for m in logged), logged


async def test_a_clone_is_followed_in_place_to_its_buttons(
    played: Played, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, seed_kib=1)
    copy = f"{source.name}-copy"
    text = f"/clone {source.name} {copy}"
    assert await played.post("/playground/command", {"user": ADMIN, "text": text}) == {"ok": True}

    def buttons(event: dict) -> list[str]:
        return [
            e.get("action_id", "")
            for b in event.get("blocks", [])
            for e in b.get("elements", [])
            if b["type"] == "actions"
        ]

    done = await played.stream.wait_for(
        lambda e: e["kind"] == "message" and ids.SWAP in buttons(e), timeout_s=60
    )
    assert done["channel"] == CHANNEL and done["ephemeral_to"] is None
    # every edit of the progress message had the same ts: one message, updated in place
    progress = [
        e for e in played.stream.events if e["kind"] == "message" and e["channel"] == CHANNEL
    ]
    assert {e["ts"] for e in progress} == {done["ts"]}
    assert len(progress) >= 2
    # and the team hears of it in its own channel
    notice = await played.stream.wait_for(lambda e: e.get("channel") == TEAM_CHANNEL)
    assert copy in notice["text"], notice


async def test_opening_the_home_tab_gets_it_published(played: Played) -> None:
    assert await played.post("/playground/home", {"user": OWNER}) == {"ok": True}
    home = await played.stream.wait_for(lambda e: e["kind"] == "home")
    assert home["user"] == OWNER and home["view"]["type"] == "home"


async def test_another_sites_page_cannot_act_through_the_playground(played: Played) -> None:
    """Any site open in the user's browser can post to 127.0.0.1 (a form, as text/plain, needs
    no CORS check) or reach it under its own name (DNS rebinding): it must not act as the
    playground's admin, nor read what the bot says."""
    command = json.dumps({"user": ADMIN, "channel": CHANNEL, "text": "/env list"})
    url = f"{played.base}/playground/command"
    as_a_form = {"Content-Type": "text/plain"}
    from_elsewhere = {"Content-Type": "application/json", "Origin": "http://evil.example"}
    rebound = {"Content-Type": "application/json", "Host": f"evil.example:{played.port}"}
    for headers, status in ((as_a_form, 415), (from_elsewhere, 403), (rebound, 403)):
        async with played.http.post(url, data=command, headers=headers) as resp:
            assert resp.status == status, await resp.text()
    async with played.http.get(f"{played.base}/playground/stream", headers=rebound) as resp:
        assert resp.status == 403
    async with played.http.get(f"{played.base}/playground/users", headers=from_elsewhere) as resp:
        assert resp.status == 403
    # the page itself, from its own origin, is served
    own = {"Content-Type": "application/json", "Origin": played.base}
    async with played.http.post(url, data=command, headers=own) as resp:
        assert resp.status == 200 and (await resp.json()) == {"ok": True}
    answer = await played.stream.wait_for(lambda e: e["kind"] == "message")
    assert answer["ephemeral_to"] == ADMIN
    assert len([e for e in played.stream.events if e["kind"] == "message"]) == 1

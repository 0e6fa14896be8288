"""The Slack app end to end: `clonebot serve` as a real process, its HTTP endpoint sent requests
signed as Slack signs them, Slack's Web API a local emulator that checks every call, and a
real Docker engine and HAProxy behind it."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.context import open_services
from services.docker import DockerClient
from services.environments import OWNER as OWNER_LABEL
from services.settings import Settings
from storage import repositories as repo
from tests.cli import clonebot
from tests.conftest import (
    IMAGE,
    OWNER,
    MakeSource,
    compose_labels,
    exec_output,
)
from tests.serving import (
    STRANGER,
    TEAM_CHANNEL,
    Bot,
    Serving,
    cli,
    env_names,
    event_of,
    is_final,
    read_log,
    select_element,
    served_page,
    texts,
    until,
    until_page,
)
from tests.slack.emulator import SlackEmulator
from tests.slack.signing import (
    CHANNEL_ID,
    command_request,
    slash_command,
)


async def test_clone_from_slack_then_swap_moves_real_traffic(
    bot: Bot, make_source: MakeSource, docker: DockerClient
) -> None:
    """The owner clones prod from Slack and swaps domains with a click; a stranger's same
    command and click are refused and change nothing."""
    prod = (await make_source(web_nodes=1)).name
    copy = f"{prod}-dev"
    cli(bot.settings, "domain", "add", prod, "shop.test", "--as", OWNER)

    # a stranger may not clone it: told why, alone; nothing is created
    reply = await bot.command(STRANGER, "/clone", f"{prod} {copy}")
    assert reply.status == 200 and reply.elapsed_s < 3
    refused = await bot.reply(lambda r: "Nothing was done" in r.get("text", ""))
    assert f"{prod} belongs to <@{OWNER}>" in refused["text"]
    assert refused["response_type"] == "ephemeral"
    assert copy not in await env_names(bot.settings)

    reply = await bot.command(OWNER, "/clone", f"{prod} {copy}")
    assert reply.status == 200 and reply.elapsed_s < 3
    posted = await bot.slack.wait_for("chat.postMessage", lambda p: p["channel"] == CHANNEL_ID)
    assert posted.params["text"].startswith(f"Cloning {prod} → {copy}")
    final = await bot.final_message()
    assert final["text"].startswith(f":white_check_mark: *{copy}* is running at")
    edits = [c for c in bot.slack.calls_to("chat.update") if c.params["ts"] == posted.answer["ts"]]
    assert len(edits) >= 2  # progress, then the result
    assert copy in await env_names(bot.settings)
    assert await served_page(bot.settings, f"{copy}.clonebot.test") == f"{prod} web 1"
    # the team channel heard of it, start and end
    await until(
        lambda: len(texts(bot.slack, "chat.postMessage", TEAM_CHANNEL)) >= 2,
        what="the clone's start and end told to the team",
    )
    team = texts(bot.slack, "chat.postMessage", TEAM_CHANNEL)
    assert team[0].startswith(f":hourglass_flowing_sand: Cloning {prod} → {copy}")
    assert team[1].startswith(f":white_check_mark: *{copy}* is running")

    # the clone serves something of its own, to tell the two apart
    await exec_output(docker, f"{copy}-web-1", "echo copy > /www/index.html")
    assert await served_page(bot.settings, "shop.test") == f"{prod} web 1"

    # a stranger clicking Swap: refused, alone; the traffic stays
    await bot.click(STRANGER, final, "swap_domains")
    refused = await bot.reply(
        lambda r: "Nothing was done" in r.get("text", "") and copy in r.get("text", "")
    )
    assert refused["replace_original"] is False
    assert await served_page(bot.settings, "shop.test") == f"{prod} web 1"

    # the owner's click moves the real traffic
    reply = await bot.click(OWNER, final, "swap_domains")
    assert reply.status == 200
    await bot.reply(lambda r: "swapped their domains" in r.get("text", ""))
    assert await served_page(bot.settings, "shop.test", within_s=2) == "copy"
    await until(
        lambda: any("swapped" in t for t in texts(bot.slack, "chat.postMessage", TEAM_CHANNEL)),
        what="the swap told to the team",
    )
    # the owner's App Home follows their jobs: the clone listed, no job left running
    home = bot.slack.workspace.home(OWNER)
    assert home is not None
    shown = json.dumps(home["blocks"], ensure_ascii=False)
    assert f"*{copy}* · yours · cloned from *{prod}*" in shown and "No job is running." in shown
    # the job's end was also a direct message to the owner (CLONEBOT_DM_AFTER=0 here)
    assert any(t.startswith(f":white_check_mark: *{copy}*") for t in _direct(bot.slack, OWNER))

    # Delete clone (Slack asked the owner to confirm): a job of its own, then the team hears
    await bot.click(STRANGER, final, "delete_clone")
    refused = await bot.reply(lambda r: "Nothing was done" in r["text"])
    # refused for who they are, before anything about the clone is told
    assert f"{copy} belongs to" in refused["text"] and "shop.test" not in refused["text"]
    # it serves the shop now: deleting it would take the shop down
    await bot.click(OWNER, final, "delete_clone")
    await bot.reply(lambda r: f"{copy} serves shop.test: swap" in r["text"])
    assert copy in await env_names(bot.settings)
    await bot.command(OWNER, "/env", f"swap {copy} {prod}")
    await until_page(bot.settings, "shop.test", f"{prod} web 1", within_s=3)
    await bot.click(OWNER, final, "delete_clone")
    await bot.slack.wait_for("chat.update", lambda p: "was deleted" in p["text"], timeout_s=30)
    assert copy not in await env_names(bot.settings)
    await until(
        lambda: any(
            f"*{copy}* was deleted" in t for t in texts(bot.slack, "chat.postMessage", TEAM_CHANNEL)
        ),
        what="the deletion told to the team",
    )
    assert await served_page(bot.settings, "shop.test") == f"{prod} web 1"


def _direct(slack: SlackEmulator, user: str) -> list[str]:
    return [
        str(c.params.get("text", ""))
        for c in slack.calls_to("chat.postMessage")
        if c.params.get("channel") == user and c.answer.get("ok")
    ]


async def test_a_failed_clone_says_what_failed_and_that_nothing_was_left(
    routed: Settings,
    slack: SlackEmulator,
    make_source: MakeSource,
    tmp_path: Path,
) -> None:
    prod = (await make_source(web_nodes=1)).name
    # a disk reserve no host has: the clone's plan finds too little free space
    async with Serving(routed, slack, tmp_path, CLONEBOT_DISK_RESERVE=str(10**18)) as bot:
        await bot.command(OWNER, "/clone", f"{prod} {prod}-big")
        final = await bot.final_message()
        assert final["text"].startswith(f":x: Cloning {prod} → {prod}-big failed: ")
        assert "not enough" in final["text"].lower()
        assert "Nothing was left behind" in final["text"]
        assert "actions" not in {b["type"] for b in final["blocks"]}
        await until(
            lambda: any(
                t.startswith(":x:") for t in texts(slack, "chat.postMessage", TEAM_CHANNEL)
            ),
            what="the failure told to the team",
        )
        url = f"http://127.0.0.1:{bot.port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            metrics = await resp.text()
        assert 'clonebot_jobs{state="failed"} 1' in metrics
        assert 'clonebot_slack_requests_total{status="200"} 1' in metrics
    assert f"{prod}-big" not in await env_names(routed)


async def test_forged_or_stale_requests_are_refused_with_401(
    bot: Bot, make_source: MakeSource
) -> None:
    prod = (await make_source(web_nodes=1)).name
    forged = await bot.command(OWNER, "/clone", f"{prod} {prod}-x", forged=True)
    stale = await bot.command(OWNER, "/clone", f"{prod} {prod}-y", age_s=6 * 60)
    assert (forged.status, stale.status) == (401, 401)
    await asyncio.sleep(1)
    assert bot.slack.calls_to("chat.postMessage") == [] and bot.slack.responses == []
    assert json.loads(cli(bot.settings, "jobs", "--json")) == []
    assert {f"{prod}-x", f"{prod}-y"}.isdisjoint(await env_names(bot.settings))


async def test_a_command_delivered_three_times_starts_one_job(
    bot: Bot, make_source: MakeSource
) -> None:
    prod = (await make_source(web_nodes=1, db_nodes=0)).name
    payload = slash_command(
        command="/clone", user_id=OWNER, text=f"{prod} {prod}-once",
        response_url=bot.slack.response_url,
    )  # fmt: skip
    request = command_request(payload)
    replies = [await bot.sender.send(request)]
    replies += await asyncio.gather(
        bot.sender.send(request, retry_num=1), bot.sender.send(request, retry_num=2)
    )
    assert [r.status for r in replies] == [200, 200, 200]
    await bot.final_message()
    await asyncio.sleep(1)  # a second job would have posted by now
    jobs = json.loads(cli(bot.settings, "jobs", "--json"))
    assert [(j["kind"], j["environment"], j["state"]) for j in jobs] == [
        ("clone", f"{prod}-once", "succeeded")
    ]
    progress = texts(bot.slack, "chat.postMessage", CHANNEL_ID)
    assert len(progress) == 1, progress


async def test_clone_modal_shows_a_bad_name_then_clones_and_split_modal_applies_a_weight(
    bot: Bot, make_source: MakeSource, docker: DockerClient
) -> None:
    prod = (await make_source(web_nodes=1, db_nodes=0)).name
    copy = f"{prod}-form"
    cli(bot.settings, "domain", "add", prod, "shop.test", "--as", OWNER)
    # Slack limits edits: the first is answered 429, and the bot waits as it is told
    bot.slack.rate_limit("chat.update", times=1, retry_after=1)

    # the form offers only what the user may clone: a stranger is told there is nothing
    await bot.command(STRANGER, "/clone", "")
    # (the form opens at once, saying it is looking, then is filled: bot.slack.modals)
    nothing = await bot.slack.wait_for("views.update")
    assert "You may clone no environment" in json.dumps(nothing.answer["view"]["blocks"])

    await bot.command(OWNER, "/clone", "")
    opened = await bot.slack.wait_for("views.update", lambda p: "clone_modal" in str(p["view"]))
    view = opened.answer["view"]
    source_field = select_element(view, "clone_source")
    # (other tests' sources, owned by the same user, may come first: the engine is shared)
    assert prod in [option["value"] for option in source_field["options"]]

    def values(name: str, ttl: str = "2d") -> dict[str, Any]:
        return {
            "clone_source": {"clone_source": {"type": "static_select",
                                              "selected_option": {"value": prod}}},
            "clone_name": {"clone_name": {"type": "plain_text_input", "value": name}},
            "clone_ttl": {"clone_ttl": {"type": "plain_text_input", "value": ttl}},
            "clone_options": {"clone_options": {"type": "checkboxes", "selected_options": []}},
            "clone_notify": {"clone_notify": {"type": "conversations_select",
                                              "selected_conversation": None}},
        }  # fmt: skip

    bad = await bot.submit(OWNER, view, values("Bad_Name"))
    assert bad.status == 200
    errors = bad.json()
    assert errors["response_action"] == "errors"
    assert "Bad_Name" in errors["errors"]["clone_name"]
    assert copy not in await env_names(bot.settings)
    bad_ttl = (await bot.submit(OWNER, view, values(copy, ttl="2 days"))).json()
    assert "An expiry is a whole number" in bad_ttl["errors"]["clone_ttl"]
    assert copy not in await env_names(bot.settings)

    good = await bot.submit(OWNER, view, values(copy))
    assert good.status == 200 and good.text == ""
    final = await bot.final_message()
    assert final["text"].startswith(f":white_check_mark: *{copy}* is running")
    listed = {e["name"]: e for e in json.loads(cli(bot.settings, "envs", "--json"))}
    assert listed[copy]["expires_at"] is not None, "the form's expiry was kept"
    rate_limited = [c for c in bot.slack.calls_to("chat.update") if c.answer.get("error")]
    assert rate_limited, "the emulator answered no edit with 429"
    await exec_output(docker, f"{copy}-web-1", "echo copy > /www/index.html")

    # Split traffic…: all of shop.test to the clone
    await bot.click(OWNER, final, "split_traffic")
    split = await bot.slack.wait_for("views.update", lambda p: "split_modal" in str(p["view"]))
    split_view = split.answer["view"]
    assert select_element(split_view, "split_other")["initial_option"]["value"] == prod
    reply = await bot.submit(
        OWNER,
        split_view,
        {
            "split_domain": {"split_domain": {"type": "static_select",
                                              "selected_option": {"value": "shop.test"}}},
            "split_other": {"split_other": {"type": "static_select",
                                            "selected_option": {"value": prod}}},
            "split_weight": {"split_weight": {"type": "number_input", "value": "100"}},
            "split_sticky": {"split_sticky": {"type": "checkboxes", "selected_options": []}},
            "split_mode": {"split_mode": {"type": "radio_buttons",
                                          "selected_option": {"value": "split"}}},
        },
    )  # fmt: skip
    assert reply.status == 200 and reply.text == ""
    # HAProxy is told after the ack
    await until_page(bot.settings, "shop.test", "copy", within_s=3)
    routes = json.loads(cli(bot.settings, "routes", "--json"))
    assert [s[0] for s in routes["shop.test"] if s[1] > 0] == [f"{copy}-1"]


async def test_env_commands_answer_the_user_and_bad_input_gets_usage(
    bot: Bot, make_source: MakeSource
) -> None:
    prod = (await make_source(web_nodes=1, db_nodes=0)).name
    await bot.command(OWNER, "/env", "list")
    listed = await bot.reply(lambda r: "Environments you may see" in r["text"])
    assert f"*{prod}* (owner)" in listed["text"]
    await bot.command(OWNER, "/env", "frobnicate")
    unknown = await bot.reply(lambda r: "frobnicate" in r["text"])
    assert unknown["text"] == "`frobnicate` is not an /env command: `/env help` lists them."
    await bot.command(OWNER, "/env", "help")
    help_text = await bot.reply(lambda r: "*/env* commands:" in r["text"])
    assert "`/env swap ENV OTHER`" in help_text["text"]
    await bot.command(OWNER, "/env", "split shop.test")
    usage = await bot.reply(lambda r: r["text"].startswith("Usage: `/env split"))
    assert usage["response_type"] == "ephemeral"
    await bot.command(OWNER, "/env", f"domain add {prod} bad_domain!")
    refused = await bot.reply(lambda r: "not a valid domain" in r["text"])
    assert refused["text"].startswith(":no_entry: Nothing was done:")
    await bot.command(OWNER, "/env", f"share {prod} <@{STRANGER}|stranger> operator")
    await bot.reply(lambda r: f"<@{STRANGER}> is now operator" in r["text"])
    await bot.command(STRANGER, "/env", "list")
    theirs = await bot.reply(lambda r: f"*{prod}* (operator)" in r["text"])
    assert theirs["response_type"] == "ephemeral"
    # App Home: the user's environments
    await bot.sender.send(
        event_of({"type": "app_home_opened", "user": OWNER, "channel": "D1", "tab": "home"})
    )
    await bot.slack.wait_for("views.publish", lambda p: p["user_id"] == OWNER)
    home = bot.slack.workspace.home(OWNER)
    assert home is not None
    sections = [b["text"]["text"] for b in home["blocks"] if b["type"] == "section"]
    assert any(s.startswith(f"*{prod}* · yours") for s in sections), sections


async def test_the_same_clone_over_socket_mode(
    routed: Settings,
    slack: SlackEmulator,
    make_source: MakeSource,
    tmp_path: Path,
) -> None:
    prod = (await make_source(web_nodes=1, db_nodes=0)).name
    serving = Serving(routed, slack, tmp_path, SLACK_APP_TOKEN=slack.app_token)
    async with serving:
        payload = slash_command(
            command="/clone", user_id=OWNER, text=f"{prod} {prod}-sock",
            response_url=slack.response_url,
        )  # fmt: skip
        ack = await slack.socket_send("slash_commands", payload, timeout_s=15)
        assert not ack  # an empty ack: the answer is the progress message
        posted = await slack.wait_for("chat.postMessage", lambda p: p["channel"] == CHANNEL_ID)
        assert posted.params["text"].startswith(f"Cloning {prod} → {prod}-sock")
        call = await slack.wait_for("chat.update", is_final, timeout_s=60)
        assert call.params["text"].startswith(f":white_check_mark: *{prod}-sock* is running")
    assert f"{prod}-sock" in await env_names(routed)


async def test_env_traffic_and_ownership_commands_reach_haproxy_and_the_right_channels(
    bot: Bot, make_source: MakeSource
) -> None:
    blue = (await make_source(web_nodes=1, db_nodes=0)).name
    green = (await make_source(web_nodes=1, db_nodes=0)).name

    async def env(text: str, expect: str, *, user: str = OWNER) -> str:
        await bot.command(user, "/env", text)
        reply = await bot.reply(lambda r: expect in r["text"])
        return str(reply["text"])

    await env(f"notify {blue} <#CBLUE0001|blue-team>", f"about *{blue}* now go to <#CBLUE0001>")
    await env(f"domain add {blue} www.test", f"www.test now leads to *{blue}*")
    await env(f"domain add {blue} shop.test", f"shop.test now leads to *{blue}*")
    assert await served_page(bot.settings, "www.test") == f"{blue} web 1"

    # a swap delivered twice (Slack retried it) swaps once
    payload = slash_command(
        command="/env", user_id=OWNER, text=f"swap {blue} {green}",
        response_url=bot.slack.response_url,
    )  # fmt: skip
    await bot.sender.send(command_request(payload))
    await bot.sender.send(command_request(payload), retry_num=1)
    await bot.reply(lambda r: "swapped their domains" in r["text"])
    await until_page(bot.settings, "www.test", f"{green} web 1", within_s=3)
    await asyncio.sleep(1)  # a second swap would have swapped back by now
    assert await served_page(bot.settings, "www.test") == f"{green} web 1"
    swapped = [t for t in texts(bot.slack, "chat.postMessage", "CBLUE0001") if "swapped" in t]
    assert len(swapped) == 1, swapped  # blue's own channel, once

    said = await env(f"failover shop.test {green} {blue}", ":shield:")
    assert said.startswith(f":shield: shop.test is served by *{green}*")
    assert await served_page(bot.settings, "shop.test", within_s=3) == f"{green} web 1"

    await env(f"owner {green} <@{STRANGER}|stranger>", f"*{green}* now belongs to <@{STRANGER}>")
    await until(
        lambda: any(
            f"*{green}* now belongs to <@{STRANGER}> (was <@{OWNER}>)" in t
            for t in texts(bot.slack, "chat.postMessage", TEAM_CHANNEL)
        ),
        what="the hand-over told to the team channel (green has no channel of its own)",
    )
    info = await env(f"info {green}", f"*{green}* · owner <@{STRANGER}>", user=STRANGER)
    assert "you: owner" in info and f"↪ shop.test: {green}, failing over to {blue}" in info
    refused = await env(f"swap {blue} {green}", "Nothing was done")
    assert f"{green} belongs to <@{STRANGER}>" in refused


@pytest.mark.slow
async def test_a_rewritten_variable_is_reported_by_name_never_by_value(
    bot: Bot, make_source: MakeSource, docker: DockerClient
) -> None:
    """A variable holding a password and a source container's name is rewritten in the clone;
    Slack (messages, App Home, answers), the command line (text and --json), the job records,
    the database file and the log show its name and the host that changed, never its value."""
    prod = (await make_source(web_nodes=0, db_nodes=1)).name
    password = f"pw{secrets.token_hex(8)}"
    value = f"postgres://app:{password}@{prod}_db_1/app"
    app = await docker.create_container(
        name=f"{prod}_app_1",
        config={
            "Image": IMAGE,
            "Cmd": ["sh", "-c", "exec sleep 100000"],
            "Env": [f"DATABASE_URL={value}", f"ADMIN_PASSWORD={password}"],
            "Labels": {OWNER_LABEL: OWNER, **compose_labels(prod, "app", 1)},
            "HostConfig": {"NetworkMode": f"{prod}_default"},
        },
    )
    await docker.start_container(app)

    await bot.command(OWNER, "/clone", f"{prod} {prod}-slack")
    final = await bot.final_message()
    shown = json.dumps(final, ensure_ascii=False)
    assert f"DATABASE_URL: {prod}_db_1 → {prod}-slack-db-1" in shown
    # the clone itself has the rewritten value: only the report leaves it out
    clone_env = (await docker.inspect_container(f"{prod}-slack-app-1"))["Config"]["Env"]
    assert f"DATABASE_URL=postgres://app:{password}@{prod}-slack-db-1/app" in clone_env
    await until(lambda: bot.slack.workspace.home(OWNER) is not None, what="App Home published")

    # in a thread: the emulator, on this loop, goes on answering the bot meanwhile
    as_json = await asyncio.to_thread(
        cli, bot.settings, "clone", prod, f"{prod}-json", "--json", "--as", OWNER
    )
    [rewrite] = json.loads(as_json)["rewrites"]
    assert rewrite == {
        "node": f"{prod}-json-app-1",
        "variable": "DATABASE_URL",
        "hosts": [[f"{prod}_db_1", f"{prod}-json-db-1"]],
    }
    as_text = await asyncio.to_thread(
        clonebot, "clone", prod, f"{prod}-text", "--as", OWNER, settings=bot.settings
    )
    assert as_text.returncode == 0, as_text.stderr
    assert f"DATABASE_URL: {prod}_db_1 → {prod}-text-db-1" in as_text.stdout
    listed = await asyncio.to_thread(cli, bot.settings, "jobs", "--json")
    async with open_services(bot.settings) as svc, svc.sessions() as session:
        stored = [j.result for j in await repo.list_jobs(session)]
    assert len(stored) == 3 and all(r and r["rewrites"] for r in stored)

    everything = [
        *(json.dumps(c.params, ensure_ascii=False) for c in bot.slack.calls),
        *(json.dumps(r, ensure_ascii=False) for r in bot.slack.responses),
        as_json, as_text.stdout, as_text.stderr, listed, json.dumps(stored), read_log(bot.log),
    ]  # fmt: skip
    assert [text for text in everything if password in text] == []
    database = Path(bot.settings.database_url.removeprefix("sqlite+aiosqlite:///"))
    for file in database.parent.glob(f"{database.name}*"):  # with its journal, if any
        assert password.encode() not in file.read_bytes(), file

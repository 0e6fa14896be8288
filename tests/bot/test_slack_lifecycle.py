"""A clone's life from Slack, end to end: its expiry's reminders and buttons, sleep and wake,
and a protected environment's change waiting for a second person's approval. `clonebot serve`
as a real process, requests signed as Slack signs them, the Web API emulator, real Docker and
HAProxy."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from services.context import open_services
from services.docker import DockerClient
from services.environments import get_environment
from services.settings import Settings
from storage import repositories as repo
from storage.models import EnvironmentRecord, utcnow
from tests.conftest import ADMIN, OWNER, MakeSource, exec_output
from tests.serving import (
    STRANGER,
    TEAM_CHANNEL,
    Bot,
    Serving,
    cli,
    served_page,
    texts,
    until,
    until_page,
)
from tests.slack.emulator import SlackEmulator


def _posted(slack: SlackEmulator, channel: str, start: str) -> dict[str, Any] | None:
    """The last message posted in ``channel`` whose text starts with ``start``."""
    for call in reversed(slack.calls_to("chat.postMessage")):
        text = str(call.params.get("text", ""))
        if (
            call.params.get("channel") == channel
            and call.answer.get("ok")
            and text.startswith(start)
        ):
            return slack.workspace.message(str(call.answer["channel"]), str(call.answer["ts"]))
    return None


async def _states(docker: DockerClient, name: str) -> set[str]:
    return {n.state for n in (await get_environment(docker, name)).nodes}


async def _expire(settings: Settings, name: str) -> None:
    """Move time: the clone expired a moment ago."""
    async with open_services(settings, migrate=False) as svc, svc.sessions() as session:
        await session.execute(
            update(EnvironmentRecord)
            .where(EnvironmentRecord.name == name)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()


async def _expires(settings: Settings, name: str) -> object:
    async with open_services(settings, migrate=False) as svc, svc.sessions() as session:
        record = await repo.get_environment(session, name)
    assert record is not None
    return record.expires_at


async def test_expiry_reminds_the_owner_and_team_stops_the_clone_and_an_extension_wakes_it(
    routed: Settings, slack: SlackEmulator, tmp_path: Path, make_source: MakeSource,
    docker: DockerClient,
) -> None:  # fmt: skip
    prod = (await make_source(web_nodes=1, db_nodes=1)).name
    copy = f"{prod}-qa"
    extra = {"CLONEBOT_EXPIRY_CHECK": "0.3", "CLONEBOT_EXPIRY_GRACE": "1h"}
    async with Serving(routed, slack, tmp_path, **extra) as bot:
        await bot.command(OWNER, "/clone", f"{prod} {copy} --ttl 30m")
        assert (await bot.final_message())["text"].startswith(f":white_check_mark: *{copy}*")

        # 30 minutes left: one reminder, to the owner and to the team, with the buttons
        start = f":hourglass: *{copy}* expires in 30 minutes"
        await until(lambda: _posted(slack, OWNER, start) is not None, what="the owner's DM")
        await until(lambda: _posted(slack, TEAM_CHANNEL, start) is not None, what="the notice")
        reminder = _posted(slack, OWNER, start)
        assert reminder is not None
        actions = [
            e["action_id"]
            for b in reminder["blocks"]
            if b["type"] == "actions"
            for e in b["elements"]
        ]
        assert actions == ["extend_env_1d", "extend_env_7d", "delete_clone"]
        listed = await _say(bot, OWNER, "list", f"*{copy}*")
        assert "expires <!date^" in listed

        # a stranger's click changes nothing; the owner's puts the expiry a day later
        before = await _expires(bot.settings, copy)
        await bot.click(STRANGER, reminder, "extend_env_1d")
        refused = await bot.reply(lambda r: "Nothing was done" in r["text"])
        assert f"{copy} belongs to <@{OWNER}>" in refused["text"]
        assert await _expires(bot.settings, copy) == before, "a stranger's click changed it"
        await bot.click(OWNER, reminder, "extend_env_1d")
        await bot.reply(lambda r: f"*{copy}* now expires <!date^" in r["text"])

        # expired: stopped, said, and an extension brings it back
        await _expire(bot.settings, copy)
        stopped = f":zzz: *{copy}* expired and was stopped"
        await until(lambda: _posted(slack, OWNER, stopped) is not None, what="the stop told")
        # the team hears it after the owner: a loaded machine showed the gap
        await until(lambda: _posted(slack, TEAM_CHANNEL, stopped) is not None, what="the team")
        notice = _posted(slack, TEAM_CHANNEL, stopped)
        assert notice is not None and "unless extended" in notice["text"]
        assert await _states(docker, copy) == {"exited"}
        assert await _states(docker, prod) == {"running"}
        await bot.click(OWNER, notice, "extend_env_7d")
        await bot.reply(lambda r: f"*{copy}* now expires" in r["text"])
        await until_page(bot.settings, f"{copy}.clonebot.test", f"{prod} web 1", within_s=30)
        assert await _states(docker, copy) == {"running"}


async def _say(bot: Bot, user: str, text: str, expect: str) -> str:
    await bot.command(user, "/env", text)
    return str((await bot.reply(lambda r: expect in r["text"]))["text"])


async def test_sleep_stops_a_clone_and_its_wake_button_starts_it_again(
    bot: Bot, make_source: MakeSource, docker: DockerClient
) -> None:
    prod = (await make_source(web_nodes=1, db_nodes=1)).name
    copy = f"{prod}-nap"
    cli(bot.settings, "clone", prod, copy, "--as", OWNER)

    await bot.command(OWNER, "/env", f"sleep {copy}")
    final = await bot.final_message()

    assert final["text"].startswith(f":white_check_mark: :zzz: *{copy}* is stopped")
    assert await _states(docker, copy) == {"exited"}
    assert "stopped (asked)" in await _say(bot, OWNER, "list", f"*{copy}*")
    await bot.command(OWNER, "/env", f"sleep {prod}")
    await bot.reply(lambda r: "only works on clones" in r["text"])

    await bot.click(OWNER, final, "wake_env")
    await until_page(bot.settings, f"{copy}.clonebot.test", f"{prod} web 1", within_s=30)
    assert await _states(docker, copy) == {"running"}
    assert await _states(docker, prod) == {"running"}


async def test_a_protected_environments_swap_is_made_once_someone_else_approves_it(
    bot: Bot, make_source: MakeSource, docker: DockerClient
) -> None:
    prod = (await make_source(web_nodes=1, db_nodes=0)).name
    copy = f"{prod}-green"
    cli(bot.settings, "clone", prod, copy, "--as", OWNER)
    cli(bot.settings, "domain", "add", prod, "shop.test", "--as", OWNER)
    await exec_output(docker, f"{copy}-web-1", "echo green > /www/index.html")
    await _say(bot, STRANGER, f"protect {prod}", "Nothing was done")
    await _say(bot, OWNER, f"protect {prod}", f"*{prod}* is protected")

    asked = await _say(bot, OWNER, f"swap {prod} {copy}", ":lock:")

    assert f"{prod} is protected: to swap the domains of {prod} and {copy}" in asked
    await until(
        lambda: _posted(bot.slack, TEAM_CHANNEL, f":lock: <@{OWNER}> asks") is not None,
        what="the approval asked in the team channel",
    )
    request = _posted(bot.slack, TEAM_CHANNEL, f":lock: <@{OWNER}> asks")
    assert request is not None
    assert await served_page(bot.settings, "shop.test") == f"{prod} web 1", "nothing yet"
    await bot.click(OWNER, request, "approve_change")
    await bot.reply(lambda r: "someone else must approve it" in r["text"])
    await bot.click(STRANGER, request, "approve_change")
    await bot.reply(lambda r: "Nothing was done" in r["text"])
    assert await served_page(bot.settings, "shop.test") == f"{prod} web 1"

    await bot.click(ADMIN, request, "approve_change")

    await bot.reply(lambda r: r["text"].startswith("Approved: swap the domains"))
    await until_page(bot.settings, "shop.test", "green", within_s=5)
    decided = await bot.slack.wait_for(
        "chat.update", lambda p: f"approved by <@{ADMIN}>" in str(p.get("text", ""))
    )
    assert "It was made." in decided.params["text"]
    assert not any(b["type"] == "actions" for b in decided.params["blocks"]), "no more buttons"
    assert any("approved by" in t for t in texts(bot.slack, "chat.update", TEAM_CHANNEL))

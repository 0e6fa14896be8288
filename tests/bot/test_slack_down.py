"""An environment that is down, in Slack: `/env list` and App Home show it as down, with its
owner, through `clonebot serve` and the Slack emulator."""

from __future__ import annotations

import pytest

from services.access import Request
from services.context import open_services
from services.docker import DockerClient
from services.environments import PROJECT
from services.ownership import share_environment
from tests.conftest import OWNER, MakeSource
from tests.serving import Bot, event_of

FRIEND = "UFRIEND01"


@pytest.mark.slow  # a bot and its router
async def test_env_list_and_app_home_show_an_environment_that_is_down(
    bot: Bot,
    docker: DockerClient,
    make_source: MakeSource,
) -> None:
    down = (await make_source(web_nodes=1, db_nodes=0)).name
    async with open_services(bot.settings) as svc:  # recorded: its owner and a viewer
        await share_environment(svc, Request(OWNER), name=down, user=FRIEND, role="viewer")
    for container in await docker.list_containers(labels=[f"{PROJECT}={down}"]):
        await docker.remove_container(container["Id"])  # `docker compose down`

    for user, role in ((OWNER, "owner"), (FRIEND, "viewer")):
        await bot.command(user, "/env", "list")
        listed = await bot.reply(lambda r: "Environments you may see" in r["text"])
        assert f"• *{down}* ({role}) · *down* · owner <@{OWNER}>" in listed["text"]

    await bot.sender.send(
        event_of({"type": "app_home_opened", "user": FRIEND, "channel": "D1", "tab": "home"})
    )
    await bot.slack.wait_for("views.publish", lambda p: p["user_id"] == FRIEND)
    home = bot.slack.workspace.home(FRIEND)
    assert home is not None
    sections = [b["text"]["text"] for b in home["blocks"] if b["type"] == "section"]
    [shown] = [s for s in sections if s.startswith(f"*{down}* ·")]
    assert shown.splitlines()[:2] == [
        f"*{down}* · <@{OWNER}>'s, you are viewer",
        "*down*: no container; its record, domains and routes are kept",
    ]

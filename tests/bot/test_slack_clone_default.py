"""The /clone form's default name skips a name a volume holds (issue 9, point 2's gap), through
`clonebot serve`, signed requests and the Slack emulator."""

from __future__ import annotations

import secrets

from services.docker import DockerClient
from services.environments import PROJECT
from tests.conftest import OWNER, MakeSource
from tests.serving import Bot, cli, select_element


async def test_the_clone_form_proposes_a_name_no_volume_holds(
    bot: Bot,
    make_source: MakeSource,
    docker: DockerClient,
) -> None:
    # a user of its own: the form's first source (whose default is shown) is this one
    user = f"U{secrets.token_hex(4).upper()}"
    source = (await make_source(web_nodes=1, db_nodes=0)).name
    cli(bot.settings, "owner", source, user, "--as", OWNER)
    held = f"{source}-clone1"
    # what `docker compose down` leaves of an environment named <source>-clone1
    volume = await docker.create_volume(
        name=f"{held}_data", labels={PROJECT: held, "com.docker.compose.volume": "data"}
    )
    try:
        await bot.command(user, "/clone", "")
        opened = await bot.slack.wait_for(
            "views.update", lambda p: "clone_modal" in str(p["view"]), timeout_s=20
        )
        view = opened.answer["view"]
        assert select_element(view, "clone_source")["initial_option"]["value"] == source
        assert select_element(view, "clone_name")["initial_value"] == f"{source}-clone2"
    finally:
        await docker.remove_volume(volume)

"""Internal domains from Slack: `/env domain add` refuses anything under the base domain."""

from __future__ import annotations

import pytest

from tests.conftest import OWNER, MakeSource
from tests.serving import Bot, served_page


@pytest.mark.slow
async def test_slack_refuses_to_bind_another_environments_internal_domain(
    bot: Bot,
    make_source: MakeSource,
) -> None:
    prod, mine = [(await make_source(web_nodes=1, db_nodes=0)).name for _ in range(2)]
    await bot.command(OWNER, "/env", f"domain add {mine} {prod.upper()}.clonebot.test.")
    refused = await bot.reply(lambda r: "is under clonebot.test" in r["text"])
    assert refused["response_type"] == "ephemeral"
    assert refused["text"] == (
        f":no_entry: Nothing was done: {prod}.clonebot.test is under clonebot.test, where "
        "clonebot gives every environment its internal domain (<env>.clonebot.test): bind a "
        "domain of your own"
    )
    assert await served_page(bot.settings, f"{prod}.clonebot.test") == f"{prod} web 1"

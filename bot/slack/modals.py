"""Forms opened at once and filled after.

A trigger_id lasts 3 s from the user's command or click; a ``views.open`` after that is
refused by Slack (``expired_trigger_id``) and the user sees nothing happen. Reading what a
form offers (every environment on the engine, their records) took over 3 s in a burst of
commands on a busy host, so the form is opened first, saying it is looking, and
``views.update`` fills it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.models.views import View
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.views import loading_modal, notice_modal

log = logging.getLogger(__name__)
UNFILLED = "This form could not be filled: clonebot's message in the channel says why."


async def open_then_fill(
    client: AsyncWebClient, *, trigger_id: str, title: str, fill: Callable[[], Awaitable[View]]
) -> None:
    """Open a form titled ``title`` now, then show what ``fill`` makes of it. When ``fill``
    fails the form says so, and the error goes on to the caller (who tells the user why)."""
    opened = (await client.views_open(trigger_id=trigger_id, view=loading_modal(title)))["view"]
    try:
        view = await fill()
    except Exception:
        await _show(client, opened, notice_modal(title, UNFILLED))
        raise
    await _show(client, opened, view)


async def _show(client: AsyncWebClient, opened: dict[str, Any], view: View) -> None:
    try:
        await client.views_update(view_id=opened["id"], hash=opened["hash"], view=view)
    except SlackApiError as exc:  # closed meanwhile, say: there is nothing left to fill
        log.info("form %s not filled: %s", opened["id"], exc.response.get("error"))

"""Clicks on a finished job's buttons. Each is authorized again for the user who clicked:
a message in a channel is seen by everyone. A refusal is told to that user alone, and the
message stays as it was."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.models.views import View

from bot.slack import ids
from bot.slack.bot import Respond, SlackBot, slack_request
from bot.slack.commands import extend, start_delete, start_power, swap
from bot.slack.modals import open_then_fill
from bot.slack.payloads import Unreadable, read_click, read_extend
from bot.slack.views import SPLIT_TITLE, split_modal
from services import access, catalog
from services.permissions import Action


def register(app: AsyncApp, bot: SlackBot) -> None:
    @app.action(ids.SWAP)
    async def swap_clicked(ack: AsyncAck, body: dict[str, Any], respond: Respond) -> None:
        await ack()
        bot.after_ack(respond, lambda: _swap(bot, body))

    @app.action(ids.SPLIT)
    async def split_clicked(ack: AsyncAck, body: dict[str, Any], respond: Respond) -> None:
        await ack()
        await bot.answer(respond, _open_split(bot, body))  # at once: the trigger expires

    @app.action(ids.DELETE)
    async def delete_clicked(ack: AsyncAck, body: dict[str, Any], respond: Respond) -> None:
        await ack()
        bot.after_ack(respond, lambda: _delete(bot, body))

    @app.action(ids.SLEEP)
    async def sleep_clicked(ack: AsyncAck, body: dict[str, Any], respond: Respond) -> None:
        await ack()
        bot.after_ack(respond, lambda: _power(bot, body, wake=False))

    @app.action(ids.WAKE)
    async def wake_clicked(ack: AsyncAck, body: dict[str, Any], respond: Respond) -> None:
        await ack()
        bot.after_ack(respond, lambda: _power(bot, body, wake=True))

    @app.action(re.compile(f"^{ids.EXTEND}_"))
    async def extend_clicked(ack: AsyncAck, body: dict[str, Any], respond: Respond) -> None:
        await ack()
        bot.after_ack(respond, lambda: _extend(bot, body))

    @app.action(ids.OPEN)
    async def open_clicked(ack: AsyncAck) -> None:
        await ack()  # a link button: Slack opens the link; the click only needs an ack


def _clicked(body: dict[str, Any]) -> tuple[ids.Target, str, str | None, str | None]:
    """What was clicked on (the button's value), by whom, in which channel, and its trigger;
    ``Unreadable`` for a click no message of ours has."""
    click, target = read_click(body)
    channel = click.channel.id if click.channel else None
    return target, click.user.id, channel, click.trigger_id


async def _swap(bot: SlackBot, body: dict[str, Any]) -> str | None:
    target, user, channel, trigger_id = _clicked(body)
    if target.other is None:
        raise Unreadable("a swap button names two environments")
    if not await bot.first_delivery(trigger_id):
        return None
    return await swap(bot, slack_request(user, channel, None), target.env, target.other)


async def _delete(bot: SlackBot, body: dict[str, Any]) -> None:
    target, user, channel, trigger_id = _clicked(body)
    request = slack_request(user, channel, trigger_id)
    await start_delete(bot, request, name=target.env, channel=channel)


async def _power(bot: SlackBot, body: dict[str, Any], *, wake: bool) -> None:
    target, user, channel, trigger_id = _clicked(body)
    request = slack_request(user, channel, trigger_id)
    await start_power(bot, request, name=target.env, wake=wake, channel=channel)


async def _extend(bot: SlackBot, body: dict[str, Any]) -> str | None:
    click, env, by = read_extend(body)
    channel = click.channel.id if click.channel else None
    if not await bot.first_delivery(click.trigger_id):
        return None
    return await extend(bot, slack_request(click.user.id, channel, None), name=env, by=by)


async def _open_split(bot: SlackBot, body: dict[str, Any]) -> None:
    """The split form, for a user who may move the clone's traffic."""
    target, user, channel, trigger_id = _clicked(body)
    request = slack_request(user, channel, None)
    async with bot.svc.sessions() as session:
        await access.check_request(
            bot.svc, session, request, name=target.env, action=Action.MOVE_TRAFFIC
        )

    async def fill() -> View:
        views = await catalog.visible_environments(bot.svc, user=user, channel=channel)
        webbed = [v for v in views if v.env.web_layer is not None and v.name != target.env]
        others = sorted((v.name for v in webbed), key=lambda n: (n != target.other, n))
        domains = [d for v in views if v.name == target.env or v.name in others for d in v.domains]
        return split_modal(target.env, others=others, domains=domains, channel=channel)

    # opened before it is filled: its trigger lasts 3 s (bot.slack.modals)
    await open_then_fill(bot.client, trigger_id=trigger_id or "", title=SPLIT_TITLE, fill=fill)

"""What `serve`'s sweeps tell Slack: a clone's expiry, a scheduled refresh that did not run,
a clone put to sleep or woken, a certificate that could not be renewed.

The owner gets a direct message, the team a notice in the clone's notify channel (else the
default one). Expiry notices carry *Extend 1 day*, *Extend 7 days* and *Delete now*, a sleep
notice *Wake* (each click authorized again).
"""

from __future__ import annotations

from datetime import datetime

from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement, SectionBlock

from bot.slack import ids
from bot.slack.messages import (
    Message,
    clip,
    context_block,
    delete_button,
    escape,
    refresh_not_run,
    wake_button,
    when,
)
from bot.slack.notices import Notices
from services.durations import describe_left
from services.expiry import ExpiryNotice
from services.idle import SleepNotice
from services.schedules import ScheduleNotice
from services.supervisor import Tellers
from services.traffic.renewals import RenewalNotice
from storage.models import utcnow

EXTENSIONS = (("Extend 1 day", "1d"), ("Extend 7 days", "7d"))


def expiry_message(notice: ExpiryNotice, *, now: datetime) -> Message:
    env, owner = notice.environment, f"<@{notice.owner}>" if notice.owner else "nobody"
    deletes = (
        f"deleted {when(notice.deletes_at)} unless extended"
        if notice.deletes_at is not None
        else "kept stopped until extended or deleted"
    )
    match notice.kind:
        case "reminder":
            left = describe_left(notice.expires_at - now)
            text = (
                f":hourglass: *{env}* expires in {left} ({when(notice.expires_at)}): it will be "
                f"stopped, then {deletes}."
            )
        case "kept":
            text = (
                f":warning: *{env}* expired, but is kept running: {notice.reason}. Extend it, "
                "or free it to let it go."
            )
        case "stopped":
            text = f":zzz: *{env}* expired and was stopped; it will be {deletes}."
        case "deleted":
            text = f":wastebasket: *{env}* expired and was deleted."
    blocks: list[Block] = [SectionBlock(text=text), context_block(f"owner {owner}")]
    if notice.kind != "deleted":
        blocks.append(ActionsBlock(elements=_buttons(notice)))
    return Message(text=text, blocks=blocks)


def _buttons(notice: ExpiryNotice) -> list[ButtonElement]:
    env = notice.environment
    buttons = [
        ButtonElement(text=label, action_id=f"{ids.EXTEND}_{by}", value=ids.encode_extend(env, by))
        for label, by in EXTENSIONS
    ]
    # an extension starts a clone its expiry stopped: no button of its own to wake it
    return [*buttons, delete_button(env, text="Delete now")]


def sleep_message(notice: SleepNotice) -> Message:
    env = notice.environment
    if notice.kind == "woke":
        text = f":sunrise: *{env}* woke up for a visitor."
        return Message(text=text, blocks=[SectionBlock(text=text)])
    idle = f"no request for {describe_left(notice.idle_for)}" if notice.idle_for else "idle"
    text = f":zzz: *{env}* is asleep ({idle}): the next visit wakes it, or *Wake*."
    blocks: list[Block] = [
        SectionBlock(text=text),
        context_block(f"owner <@{notice.owner}>"),
        ActionsBlock(elements=[wake_button(env)]),
    ]
    return Message(text=text, blocks=blocks)


def renewal_message(notice: RenewalNotice) -> Message:
    """A certificate `serve` could not renew, or renews no more; the ACME server's reason is
    quoted as text."""
    domain = escape(notice.domain)
    why = escape(clip(notice.error, 300))
    if notice.retry_at is None:
        text = (
            f":warning: The certificate of *{domain}* is no longer renewed: {why}. "
            f"clonebot will not try again; a new one: `clonebot cert add {domain} --acme`."
        )
    else:
        text = (
            f":warning: The certificate of *{domain}* could not be renewed: {why}. It expires "
            f"{when(notice.expires_at)}; clonebot tries again {when(notice.retry_at)} "
            f"(or now: `clonebot cert add {domain} --acme`)."
        )
    held = f"*{escape(notice.environment)}*" if notice.environment else "no environment"
    context = f"asked for by <@{notice.added_by}> · held by {held}"
    return Message(text=text, blocks=[SectionBlock(text=text), context_block(context)])


def tellers(notices: Notices) -> Tellers:
    """Owner (a direct message) and team (a notice) told of what the sweeps did; its own
    notify channel is kept in each notice: a deleted clone's record is gone."""

    async def owner_and_team(owner: str | None, channel: str | None, message: Message) -> None:
        if owner is not None:
            await notices.direct(owner, message)
        await notices.send_to(channel or notices.default_channel, message)

    async def expiry(notice: ExpiryNotice) -> None:
        message = expiry_message(notice, now=utcnow())
        await owner_and_team(notice.owner, notice.channel, message)

    async def schedule(notice: ScheduleNotice) -> None:
        await owner_and_team(notice.owner, notice.channel, refresh_not_run(notice))

    async def sleep(notice: SleepNotice) -> None:
        await notices.send_to(notice.channel or notices.default_channel, sleep_message(notice))

    async def renewal(notice: RenewalNotice) -> None:
        await owner_and_team(notice.added_by, notice.channel, renewal_message(notice))

    return Tellers(expiry=expiry, schedule=schedule, sleep=sleep, renewal=renewal)

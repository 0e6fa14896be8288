"""A clone's expiry in Slack: the reminders, the notices, and when a date is shown.

The owner gets a direct message, the team a notice in the clone's notify channel; both carry
*Extend 1 day*, *Extend 7 days* and *Delete now* (each click authorized again).
"""

from __future__ import annotations

from datetime import datetime

from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement, SectionBlock

from bot.slack import ids
from bot.slack.messages import Message, context_block, delete_button, when
from bot.slack.notices import Notices
from services.durations import describe_left
from services.expiry import ExpiryNotice, ExpirySink
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


def expiry_sink(notices: Notices) -> ExpirySink:
    """Tell the owner (a direct message) and the team (a notice) of an expiry."""

    async def tell(notice: ExpiryNotice) -> None:
        message = expiry_message(notice, now=utcnow())
        if notice.owner is not None:
            await notices.direct(notice.owner, message)
        # its own notify channel, kept in the notice: a deleted clone's record is gone
        await notices.send_to(notice.channel or notices.default_channel, message)

    return tell

"""Approvals in Slack: the message asking for one, its *Approve* and *Reject* buttons, and the
approved change made.

The message goes to the team channel of the environments (else where it was asked); a click is
decided for the user who clicked (never the asker; the change's right on every environment
it touches), then the change is made in the asker's name and the message says how it ended.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import ActionsBlock, ButtonElement, ConfirmObject, SectionBlock

from bot.slack import ids
from bot.slack.bot import Respond, SlackBot, slack_request
from bot.slack.messages import Message, context_block, escape, when
from bot.slack.payloads import read_approval_click
from services import approvals
from services.approvals import ApprovalState, Performed
from services.errors import ApprovalNeeded, ClonebotError
from storage.models import Approval

log = logging.getLogger(__name__)


def register(app: AsyncApp, bot: SlackBot) -> None:
    @app.action(re.compile(f"^({ids.APPROVE}|{ids.REJECT})$"))
    async def decided(ack: AsyncAck, body: dict[str, Any], respond: Respond) -> None:
        await ack()
        bot.after_ack(respond, lambda: _decide(bot, body))

    async def asked(needed: ApprovalNeeded) -> None:
        if needed.new:
            await post_approval(bot, needed.approval)

    bot.on_approval_needed = asked


def approval_message(approval: Approval, *, change: str) -> Message:
    """An approval asked: what, by whom, until when, and the two buttons."""
    text = (
        f":lock: <@{approval.requested_by}> asks to *{escape(change)}*: "
        f"{', '.join(approval.environments)} {'is' if len(approval.environments) == 1 else 'are'} "
        f"protected, so someone else with rights on it must approve."
    )
    approve = ConfirmObject(
        title="Approve the change?",
        text=f"Approve: {escape(change)}? It is made at once, as <@{approval.requested_by}> asked.",
        confirm="Approve",
        deny="Cancel",
    )
    buttons = [
        ButtonElement(
            text="Approve", action_id=ids.APPROVE, value=approval.id, style="primary",
            confirm=approve,
        ),
        ButtonElement(text="Reject", action_id=ids.REJECT, value=approval.id, style="danger"),
    ]  # fmt: skip
    lapses = f"approval {approval.id} · lapses {when(approval.expires_at)}"
    blocks = [SectionBlock(text=text), context_block(lapses), ActionsBlock(elements=buttons)]
    return Message(text=text, blocks=blocks)


def decided_message(approval: Approval, *, change: str, outcome: str) -> Message:
    """The approval's message once decided: who decided, and how the change ended."""
    verb = "approved" if approval.state != ApprovalState.REJECTED else "rejected"
    text = (
        f":lock: <@{approval.requested_by}> asked to *{escape(change)}*: {verb} by "
        f"<@{approval.decided_by}>. {outcome}"
    )
    return Message(
        text=text, blocks=[SectionBlock(text=text), context_block(f"approval {approval.id}")]
    )


async def post_approval(bot: SlackBot, approval_id: str) -> None:
    """The approval's message, in the team channel of its environments (else where it was
    asked, else to the asker); a message that cannot be posted is logged."""
    waiting = await approvals.pending_approvals(bot.svc, approval_id=approval_id)
    if not waiting:
        return
    approval = waiting[0]
    change = approvals.describe(approval.kind, approval.args)
    message = approval_message(approval, change=change).to_dict()
    # a bound environment's people click only in its channels: where it was asked, then
    team = await approvals.approval_channel(bot.svc, approval) or await bot.notices.channel_for(
        *(str(n) for n in approval.environments)
    )
    for where in dict.fromkeys(w for w in (team, approval.channel, approval.requested_by) if w):
        try:
            posted = await bot.client.chat_postMessage(channel=where, **message)
        except SlackApiError as exc:
            log.warning(
                "approval %s not posted in %s: %s", approval.id, where, exc.response.get("error")
            )
            continue
        await approvals.record_message(
            bot.svc, approval.id, channel=str(posted["channel"]), ts=str(posted["ts"])
        )
        return


async def _decide(bot: SlackBot, body: dict[str, Any]) -> str | None:
    click, approval_id, approve = read_approval_click(body)
    channel = click.channel.id if click.channel else None
    if not await bot.first_delivery(click.trigger_id):
        return None
    request = slack_request(click.user.id, channel, None)
    approval = await approvals.decide(bot.svc, request, approval_id=approval_id, approve=approve)
    change = approvals.describe(approval.kind, approval.args)
    if not approve:
        await _show(bot, approval, change=change, outcome="Nothing was changed.")
        return f"Rejected: {escape(change)}."
    try:
        performed = await approvals.perform(bot.svc, approval)
    except ClonebotError as exc:
        outcome = f"It could not be made: {escape(exc.message)}"
        await _show(bot, approval, change=change, outcome=outcome)
        return f"Approved, but {escape(change)} could not be made: {escape(exc.message)}"
    await _follow(bot, performed, channel=approval.slack_channel or channel or click.user.id)
    if performed.job is not None:  # its own message tells how it ends
        outcome = f"Its job {performed.job.id} started."
        await _show(bot, approval, change=change, outcome=outcome)
        return f"Approved: {escape(change)}; job {performed.job.id} started."
    await _show(bot, approval, change=change, outcome="It was made.")
    return f"Approved: {escape(change)}; done."


async def _follow(bot: SlackBot, performed: Performed, *, channel: str) -> None:
    if performed.job is not None:
        bot.jobs.start(performed.job, channel=channel)
    if performed.traffic:
        await bot.apply_routes()


async def _show(bot: SlackBot, approval: Approval, *, change: str, outcome: str) -> None:
    """The approval's message says how it ended, without its buttons; the team hears it."""
    message = decided_message(approval, change=change, outcome=outcome)
    if approval.slack_channel and approval.slack_ts:
        try:
            await bot.client.chat_update(
                channel=approval.slack_channel, ts=approval.slack_ts, **message.to_dict()
            )
            return
        except SlackApiError as exc:
            log.warning(
                "approval %s message not updated: %s", approval.id, exc.response.get("error")
            )
    await bot.notices.send(message, about=tuple(str(n) for n in approval.environments))

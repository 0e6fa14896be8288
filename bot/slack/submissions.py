"""Submitted modals. A field Slack let through but clonebot refuses is shown under that field
(``response_action: errors``) and the modal stays open; nothing is done."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp

from bot.slack import ids, messages
from bot.slack.bot import SlackBot, slack_request
from bot.slack.commands import traffic_changed
from bot.slack.payloads import Unreadable, read_submission
from bot.slack.views import FieldError, field_errors, read_clone_modal, read_split_modal
from services import jobs
from services.errors import (
    ApprovalNeeded,
    ClonebotError,
    EnvironmentNotFound,
    Forbidden,
    InvalidName,
    NameTaken,
)
from services.traffic import routing

log = logging.getLogger(__name__)
_FAILED = "That failed on clonebot's side; the error is in its log."


def register(app: AsyncApp, bot: SlackBot) -> None:
    @app.view(ids.CLONE_MODAL)
    async def clone_submitted(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        user = "someone"
        try:
            user = read_submission(body).user.id
            form = read_clone_modal(view)
            request = slack_request(user, form.channel, body.get("trigger_id"))
            job = await jobs.submit_clone(
                bot.svc, request, source=form.source, name=form.name, snapshot=form.snapshot,
                notify=form.notify, ttl=form.ttl,
            )  # fmt: skip
        except FieldError as exc:
            await ack(**field_errors(**{exc.block_id: exc.message}))
            return
        except Unreadable as exc:
            await ack(**field_errors(**{ids.CLONE_NAME: exc.message}))
            return
        except (InvalidName, NameTaken) as exc:
            await ack(**field_errors(**{ids.CLONE_NAME: exc.message}))
            return
        except ClonebotError as exc:  # the source: gone, or not the user's to clone
            await ack(**field_errors(**{ids.CLONE_SOURCE: exc.message}))
            return
        except Exception:
            log.exception("clone form of %s", user)
            await ack(**field_errors(**{ids.CLONE_NAME: _FAILED}))
            return
        await ack()
        bot.jobs.start(job, channel=form.channel or user)

    @app.view(ids.SPLIT_MODAL)
    async def split_submitted(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        try:
            user = read_submission(body).user.id
            form = read_split_modal(view)
        except FieldError as exc:
            await ack(**field_errors(**{exc.block_id: exc.message}))
            return
        except Unreadable as exc:
            await ack(**field_errors(**{ids.SPLIT_DOMAIN: exc.message}))
            return
        request = slack_request(user, form.channel, None)
        try:
            if form.mode == "split":
                await routing.set_split(
                    bot.svc, request, domain=form.domain, weights=form.weights, sticky=form.sticky
                )
                note = messages.split_changed(form.domain, form.weights, form.sticky, by=user)
            else:
                await routing.set_failover(
                    bot.svc, request, domain=form.domain, primary=form.primary, backup=form.backup
                )
                note = messages.failover_set(form.domain, form.primary, form.backup, by=user)
        except (Forbidden, EnvironmentNotFound) as exc:
            await ack(**field_errors(**{ids.SPLIT_OTHER: exc.message}))
            return
        except ApprovalNeeded as exc:  # nothing done yet: the team is asked, the form says so
            if bot.on_approval_needed is not None:
                await bot.on_approval_needed(exc)
            await ack(**field_errors(**{ids.SPLIT_DOMAIN: f"{exc.message}; the team was asked"}))
            return
        except ClonebotError as exc:
            await ack(**field_errors(**{ids.SPLIT_DOMAIN: exc.message}))
            return
        except Exception:
            log.exception("split form of %s", user)
            await ack(**field_errors(**{ids.SPLIT_DOMAIN: _FAILED}))
            return
        await ack()
        await traffic_changed(bot, note, about=(form.env, form.other))

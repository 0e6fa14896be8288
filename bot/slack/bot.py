"""What every listener shares: the services, the Web API client, jobs, notices; and the one
way a listener's work ends (done, refused with a reason, or failed without a stack trace)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.exc import IntegrityError

from bot.slack.messages import refusal
from bot.slack.notices import Notices
from bot.slack.progress import JobMessages
from services.access import Request
from services.context import Services
from services.errors import ApprovalNeeded, ClonebotError
from services.traffic.router import apply_bindings, apply_now
from storage.models import IdempotencyKey

log = logging.getLogger(__name__)


class Respond(Protocol):
    async def __call__(self, text: str = ..., **kwargs: Any) -> Any: ...


class Usage(Exception):
    """Input that fits no command: answered with how to use it."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


# Work after an ack runs on a few workers, not a task per request: in a burst, the acks of
# the requests still arriving are not held up by the work of those already answered.
WORKERS = 4
# Requests acknowledged but not yet worked on are at most CLONEBOT_SLACK_QUEUE (100); past it
# a request is answered "busy" at once rather than the queue (and the memory, and the wait)
# growing without end.
BUSY = ":hourglass: clonebot is busy with other requests; try again in a minute."
# the request's context goes with its work: its log lines keep the request's id
Work = tuple[Respond, Callable[[], Awaitable[str | None]], contextvars.Context]


@dataclass
class SlackBot:
    svc: Services
    client: AsyncWebClient
    notices: Notices
    jobs: JobMessages
    _queue: asyncio.Queue[Work] = field(init=False)
    _workers: list[asyncio.Task[None]] = field(default_factory=list)
    _refusals: set[asyncio.Task[None]] = field(default_factory=set)
    # told when a change waits for approval (bot.slack.approvals posts the request)
    on_approval_needed: Callable[[ApprovalNeeded], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_limit)

    @property
    def queue_limit(self) -> int:
        return self.svc.settings.slack_queue_limit

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work()) for _ in range(WORKERS)]

    async def stop(self, *, within_s: float = 10) -> None:
        """Finish the work already acknowledged (for ``within_s`` at most), then stop."""
        try:
            async with asyncio.timeout(within_s):
                await self._queue.join()
        except TimeoutError:
            log.warning("stopping with %d Slack requests unanswered", self._queue.qsize())
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def idle(self) -> None:
        """Return once every request acknowledged so far has been answered."""
        await self._queue.join()

    def after_ack(self, respond: Respond, work: Callable[[], Awaitable[str | None]]) -> None:
        """Run ``work`` once a worker is free, and answer the user with what it says; when
        CLONEBOT_SLACK_QUEUE requests already wait, answer at once that clonebot is busy."""
        try:
            self._queue.put_nowait((respond, work, contextvars.copy_context()))
        except asyncio.QueueFull:
            log.warning("work queue full (%d): a request was answered busy", self.queue_limit)
            task = asyncio.create_task(self.answer(respond, _say(BUSY)))
            self._refusals.add(task)
            task.add_done_callback(self._refusals.discard)

    async def _work(self) -> None:
        while True:
            respond, work, context = await self._queue.get()
            try:
                await asyncio.create_task(self.answer(respond, work()), context=context)
            except Exception:  # answer() tells the user; nothing may stop a worker
                log.exception("a Slack request's work failed")
            finally:
                self._queue.task_done()

    @property
    def base_domain(self) -> str:
        return self.svc.settings.base_domain

    async def first_delivery(self, trigger_id: str | None) -> bool:
        """True the first time a request's trigger_id is seen: Slack may deliver a request
        again, and an action that is not a job must not run twice."""
        if not trigger_id:
            return True
        async with self.svc.sessions() as session:
            session.add(IdempotencyKey(key=f"slack-action:{trigger_id}"))
            try:
                await session.commit()
            except IntegrityError:
                return False
        return True

    async def apply_routes(self, *, bindings_only: bool = False) -> None:
        """The database's routes to HAProxy now, rather than at the router keeper's next poll;
        ``bindings_only`` after a change of domain bindings alone (the map, at once)."""
        try:
            await (apply_bindings if bindings_only else apply_now)(self.svc)
        except ClonebotError as exc:
            log.warning("routes not applied yet: %s", exc.message)
        except Exception:  # the change is in the database: the router keeper applies it
            log.exception("routes not applied yet")

    async def answer(self, respond: Respond, work: Awaitable[str | None]) -> None:
        """Run ``work``; tell the user (only them) what it says, why it was refused, or that
        it failed."""
        try:
            text = await work
        except Usage as exc:
            text = exc.text
        except ApprovalNeeded as exc:  # nothing done yet: the team is asked to approve
            text = f":lock: {exc.message}; the team was asked."
            if self.on_approval_needed is not None:
                try:
                    await self.on_approval_needed(exc)
                except Exception:
                    log.exception("approval %s not asked in Slack", exc.approval)
                    text = f":lock: {exc.message}."
        except ClonebotError as exc:
            text = refusal(exc.message)
        except Exception:
            log.exception("a Slack request failed")
            text = ":warning: That failed on clonebot's side; the error is in its log."
        if not text:
            return
        try:
            await respond(text=text, response_type="ephemeral", replace_original=False)
        except Exception:
            log.exception("answer not sent: %s", text)


async def _say(text: str) -> str:
    return text


def slack_request(user: str, channel: str | None, trigger_id: str | None) -> Request:
    """A request from Slack; its trigger_id makes a second delivery find the first's job."""
    return Request(user=user, channel=channel, key=f"slack:{trigger_id}" if trigger_id else None)

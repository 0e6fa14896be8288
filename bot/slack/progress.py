"""A job's one Slack message: posted when the job starts, edited as it runs, its result at the end.

The job runs in this process (``run_job``) and writes its steps to the database; the message
follows them from there, edited at most once a second and no sooner than a 429's
``Retry-After``. A delivery Slack sent twice finds the job's message claimed and does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack import messages
from bot.slack.messages import Message
from bot.slack.notices import Notices
from services.context import Services
from services.errors import ClonebotError
from services.jobs import run_job
from storage import repositories as repo
from storage.models import Job, JobState, utcnow
from storage.outage import patiently

log = logging.getLogger(__name__)
EDIT_EVERY_S = 1.0  # Slack allows about one chat.update a second per message
# the job's result is tried this often while Slack fails (each try is itself retried by the
# client on a 5xx, bot.slack.retries): some 25 s of Slack failing, then given up
LAST_TRIES = 4
_UNDERWAY = (JobState.QUEUED, JobState.RUNNING)
RateLimited = Callable[[float], Awaitable[None]]


class JobMessages:
    """Runs jobs asked for in Slack, each with its progress message; keeps them until done."""

    def __init__(self, svc: Services, client: AsyncWebClient, notices: Notices) -> None:
        self._svc, self._client, self._notices = svc, client, notices
        self._tasks: set[asyncio.Task[None]] = set()
        self.edit_every_s = EDIT_EVERY_S
        # told a user's jobs changed (one started or ended): their App Home shows them
        self.on_change: Callable[[str], Awaitable[None]] | None = None
        self._closed = False

    @property
    def following(self) -> int:
        return len(self._tasks)

    def start(self, job: Job, *, channel: str) -> None:
        """Run ``job`` and follow it in ``channel``, in the background."""
        if self._closed:  # stopping: the job stays queued, for the next worker to run
            log.warning("job %s not started: clonebot is stopping", job.id)
            return
        task = asyncio.create_task(self._follow(job, channel=channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop following: running jobs are cancelled, and so rolled back."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every job followed so far has ended (for tests and a graceful stop)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self, job: Job, *, channel: str) -> None:
        async with self._svc.sessions() as session, session.begin():
            if not await repo.claim_message(session, job.id, channel=channel):
                return  # a second delivery of the request: the first one follows the job
        # the team's channel is read now: a delete removes the record that names it
        team = await self._notices.channel_for(*_about(job))
        # the job first: nothing Slack does (slow, refusing) may hold it up or lose it
        runner = asyncio.create_task(_run(self._svc, job.id))
        try:
            editor = await self._post(job, channel)
            await self._notices.send_to(team, messages.clone_started(job))
            await self._changed(job.requester)
            # the job may have been claimed by another worker: its state is what ends it
            while (current := await _reload(self._svc, job.id)).state in _UNDERWAY:
                if editor is not None:
                    editor = await editor.shown(messages.progress_message(current, now=utcnow()))
                await asyncio.wait({runner}, timeout=self.edit_every_s)
            if editor is not None:
                result = messages.result_message(
                    current, base_domain=self._base, port=self._svc.settings.router_port
                )
                await editor.shown(result, last=True)
            await self._tell_team(current, team)
            await self._changed(job.requester)
        except Exception:
            log.exception("following job %s", job.id)
        finally:
            if not runner.done():  # cancelled (clonebot stopping): the job rolls back
                runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    async def _changed(self, user: str) -> None:
        if self.on_change is None:
            return
        try:
            await self.on_change(user)
        except Exception:  # the Home tab is a view of the jobs, not part of them
            log.exception("App Home of %s not refreshed", user)

    @property
    def _base(self) -> str:
        return self._svc.settings.base_domain

    async def _post(self, job: Job, channel: str) -> _Editor | None:
        """The job's message, in ``channel`` or, where the bot may not post, in a direct
        message to whoever asked; None if neither could be posted (the job runs anyway)."""
        message = messages.progress_message(job, now=utcnow()).to_dict()
        for where in dict.fromkeys((channel, job.requester)):
            try:
                answer = await self._client.chat_postMessage(channel=where, **message)
            except SlackApiError as exc:
                log.warning(
                    "job %s: no message in %s: %s", job.id, where, exc.response.get("error")
                )
                continue
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("job %s: no message in %s: %r", job.id, where, exc)
                continue
            posted, ts = str(answer["channel"]), str(answer["ts"])
            async with self._svc.sessions() as session, session.begin():
                await repo.update_job(session, job.id, slack_channel=posted, slack_ts=ts)
            return _Editor(self._client, posted, ts, every_s=self.edit_every_s)
        return None

    async def _tell_team(self, job: Job, team: str | None) -> None:
        if job.state == JobState.SUCCEEDED:
            note = messages.clone_done(
                job, base_domain=self._base, port=self._svc.settings.router_port
            )
        else:
            note = messages.clone_failed(job)
        await self._notices.send_to(team, note)
        took = (job.finished_at or utcnow()) - (job.started_at or job.created_at)
        if took.total_seconds() >= self._svc.settings.dm_after_s:
            await self._notices.direct(job.requester, note)


def _about(job: Job) -> tuple[str | None, ...]:
    """Whose notify channel hears of a job: the environment's, else its source's."""
    return (messages.result_environment(job), job.environment, job.source)


async def _run(svc: Services, job_id: str) -> None:
    with contextlib.suppress(ClonebotError):  # recorded on the job, shown in its message
        await run_job(svc, job_id)


async def _reload(svc: Services, job_id: str) -> Job:
    async def read() -> Job | None:
        async with svc.sessions() as session:
            return await repo.get_job(session, job_id)

    # a database restarting is waited for: the message would otherwise never show the end
    job = await patiently(read, what=f"following job {job_id}")
    assert job is not None
    return job


class _Editor:
    """Edits one message: only when it changed, at most once per ``every_s``, and never
    before a 429's ``Retry-After`` has passed. The last edit waits for its turn and is tried
    again when Slack fails (429, 5xx, no answer), ``LAST_TRIES`` times at most; the others
    are dropped for a newer one."""

    def __init__(self, client: AsyncWebClient, channel: str, ts: str, *, every_s: float) -> None:
        self._client, self._channel, self._ts, self._every_s = client, channel, ts, every_s
        self._shown: dict[str, Any] | None = None
        self._next = time.monotonic() + every_s

    async def shown(self, message: Message, *, last: bool = False) -> _Editor | None:
        """Show ``message`` if its turn has come (the last one waits for its turn); this
        editor again, or None once Slack refused an edit for good (the message was deleted,
        say): the job goes on without it."""
        content = message.to_dict()
        if content == self._shown:
            return self
        for _ in range(LAST_TRIES if last else 1):
            wait = self._next - time.monotonic()
            if wait > 0 and not last:
                return self
            await asyncio.sleep(max(wait, 0))
            try:
                await self._client.chat_update(channel=self._channel, ts=self._ts, **content)
            except SlackApiError as exc:
                if not _passing(exc):
                    log.warning("message %s not edited: %s", self._ts, exc.response.get("error"))
                    return None
                self._next = time.monotonic() + _retry_after(exc, default=self._every_s)
                continue
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:  # Slack unreachable
                log.warning("message %s not edited: %r", self._ts, exc)
                self._next = time.monotonic() + self._every_s
                continue
            self._shown, self._next = content, time.monotonic() + self._every_s
            return self
        if last:
            log.warning("message %s: its last edit failed %d times", self._ts, LAST_TRIES)
        return self


def _passing(exc: SlackApiError) -> bool:
    """Whether Slack refused for now only: rate-limited, or its servers failing."""
    status: int = exc.response.status_code
    return status == 429 or status >= 500


def _retry_after(exc: SlackApiError, *, default: float) -> float:
    headers = {k.lower(): v for k, v in exc.response.headers.items()}
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return default

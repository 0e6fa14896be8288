"""What a log line is about: the job running, the Slack request being answered.

Set where a job runs (``jobs.run_job``) and where a request arrives (``bot.slack.edge``);
``bot.logs`` puts them on every line. Context variables follow the work into the tasks it
starts, and no further.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

JOB_ID: ContextVar[str | None] = ContextVar("clonebot_job_id", default=None)
REQUEST_ID: ContextVar[str | None] = ContextVar("clonebot_request_id", default=None)


@contextmanager
def job_logged(job_id: str) -> Iterator[None]:
    """Lines logged inside the block (and by tasks it starts) name ``job_id``."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


@contextmanager
def request_logged() -> Iterator[str]:
    """A new request id for the block's lines; Slack sends none of its own over HTTP."""
    request_id = secrets.token_hex(8)
    token = REQUEST_ID.set(request_id)
    try:
        yield request_id
    finally:
        REQUEST_ID.reset(token)

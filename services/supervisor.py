"""The long-running side of clonebot: recover at start, then run what was left queued."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from services.context import Services
from services.errors import ClonebotError
from services.jobs import run_job
from services.recovery import recover_jobs
from storage.models import Job, utcnow

log = logging.getLogger(__name__)
# a job its submitter has not started by then was orphaned between recording and running
ORPHANED_AFTER = timedelta(seconds=10)


async def serve(
    svc: Services,
    *,
    stop: asyncio.Event,
    poll_s: float = 1.0,
    recover_every_s: float = 30.0,
    on_recovered: Callable[[list[Job]], None] = lambda jobs: None,
) -> None:
    """Recover jobs of dead processes, then keep running orphaned queued jobs until ``stop``."""
    on_recovered(await recover_jobs(svc))
    last_recovery = time.monotonic()
    while not stop.is_set():
        for job in await _orphaned_queued(svc):
            try:
                await run_job(svc, job.id)
            except ClonebotError as exc:  # recorded on the job; the worker goes on
                log.warning("job %s ended: %s", job.id, exc.message)
        if time.monotonic() - last_recovery >= recover_every_s:
            on_recovered(await recover_jobs(svc))
            last_recovery = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=poll_s)


async def _orphaned_queued(svc: Services) -> list[Job]:
    query = select(Job).where(Job.state == "queued", Job.created_at < utcnow() - ORPHANED_AFTER)
    async with svc.sessions() as session:
        return list((await session.scalars(query.order_by(Job.created_at))).all())

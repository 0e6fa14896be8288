"""A delivery's idempotency key is kept a day: Slack's retries (within minutes) find the first
job; a key older than a day is forgotten when clonebot starts or recovers, and the same key
after that is a new request."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import update

from services import supervisor
from services.access import Request
from services.context import Services
from services.jobs import submit_clone
from storage.models import IdempotencyKey, utcnow
from tests.conftest import OWNER, MakeSource


async def test_a_key_older_than_a_day_is_forgotten_at_start_and_a_fresh_one_still_deduplicates(
    svc: Services, make_source: MakeSource
) -> None:
    source = (await make_source(web_nodes=1, db_nodes=0)).name
    old, fresh = Request(OWNER, key="slack:Told"), Request(OWNER, key="slack:Tfresh")
    first_old = await submit_clone(svc, old, source=source, name=None)
    first_fresh = await submit_clone(svc, fresh, source=source, name=None)
    assert first_old.environment != first_fresh.environment  # two jobs, two default names
    async with svc.sessions() as session, session.begin():
        for key, age in ((old.key, timedelta(hours=25)), (fresh.key, timedelta(hours=23))):
            aged = update(IdempotencyKey).where(IdempotencyKey.key == key)
            await session.execute(aged.values(created_at=utcnow() - age))

    stop = asyncio.Event()
    stop.set()  # the start alone: recovery, then keys expired
    await supervisor.serve(svc, stop=stop, router=False)

    # a day old: the same key again is a new request, a job of its own
    again = await submit_clone(svc, old, source=source, name=None)
    assert again.id != first_old.id
    assert again.environment not in (first_old.environment, first_fresh.environment)
    # younger than a day: still the first delivery's job
    assert (await submit_clone(svc, fresh, source=source, name=None)).id == first_fresh.id

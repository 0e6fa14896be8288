"""The audit log as people read it: an environment's latest entries, for those who may see
the environment; and the whole log, page by page, for a compliance export.

An entry's ``detail`` holds job ids and names only, never a secret: what writes one keeps it
that way (``storage.repositories.record_audit``), so what reads one shows it as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from services.access import Request, check_recorded
from services.context import Services
from services.permissions import Action
from storage import repositories as repo
from storage.models import AuditEntry

PAGE = 500  # entries read at a time by an export: what it holds in memory at most


async def recent_entries(
    svc: Services, request: Request, *, name: str, limit: int = 20
) -> list[AuditEntry]:
    """The latest ``limit`` entries about ``name``, newest first, if ``request`` may view it
    (a refusal is audited and raises ``Forbidden``). An environment that is down still has
    its record, and so its audit."""
    async with svc.sessions() as session:
        _, record = await check_recorded(svc, session, request, name=name, action=Action.VIEW)
        # this environment's, not an earlier one's of the same name (deleted since); its own
        # first entry is written with its record, in the same instant
        since = record.created_at - timedelta(seconds=1)
        return list(await repo.list_audit(session, environment=name, since=since, limit=limit))


async def stream_entries(
    svc: Services,
    *,
    environment: str | None = None,
    since: datetime | None = None,
    page: int = PAGE,
) -> AsyncIterator[AuditEntry]:
    """Every entry (about ``environment``, made at ``since`` or later; None: no limit),
    newest first, read ``page`` at a time, each page in a session of its own: an export of a
    large log holds one page, not the table."""
    before: int | None = None
    while True:
        async with svc.sessions() as session:
            found = await repo.list_audit(
                session, environment=environment, since=since, before=before, limit=page
            )
        for entry in found:
            yield entry
        if len(found) < page:
            return
        before = found[-1].id

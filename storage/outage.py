"""Riding out a database that is away for a while (a PostgreSQL restart takes seconds).

A refused connection reaches us as an ``OSError`` (asyncpg raises it before SQLAlchemy wraps
anything); a server shutting down, or a connection it dropped, as a ``DBAPIError`` saying
so. A constraint, a trigger's refusal or a query that is wrong is no outage, and is never
tried again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")
OUTAGE_S = 120.0  # how long a database may be away before what waits on it gives up


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached now (not that a query is wrong)."""
    if isinstance(exc, OSError):  # refused, reset, timed out
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
        return True
    # PostgreSQL's classes 08 (connection exception) and 57P (shutting down, starting up)
    code = getattr(exc.orig, "sqlstate", None)
    return isinstance(code, str) and code.startswith(("08", "57P"))


async def patiently(
    call: Callable[[], Awaitable[T]], *, what: str, within_s: float = OUTAGE_S, every_s: float = 1.0
) -> T:
    """``call()``, tried again every ``every_s`` while the database is away, for ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await call()
        except Exception as exc:
            if not is_outage(exc) or time.monotonic() + every_s > deadline:
                raise
            log.warning("%s: the database does not answer (%s); trying again", what, exc)
        await asyncio.sleep(every_s)

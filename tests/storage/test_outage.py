"""What counts as the database being away, and waiting it out (storage/outage.py)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from storage.outage import is_outage, patiently


class PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _wrapped(orig: Exception, cls: type[DBAPIError] = DBAPIError) -> DBAPIError:
    return cls("select 1", None, orig)


@pytest.mark.parametrize(
    ("exc", "outage"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (_wrapped(PgError("57P03")), True),  # the database system is starting up
        (_wrapped(PgError("57P01")), True),  # terminating connection (admin shutdown)
        (_wrapped(PgError("08006")), True),  # connection failure
        (_wrapped(Exception("database is locked"), OperationalError), True),
        (_wrapped(PgError("23505"), IntegrityError), False),  # a duplicate key
        (_wrapped(PgError("P0001")), False),  # a trigger's RAISE
        (ValueError("a bug"), False),
    ],
)
def test_an_outage_is_told_from_a_wrong_query(exc: BaseException, outage: bool) -> None:
    assert is_outage(exc) is outage


async def test_patiently_waits_out_an_outage_but_not_a_wrong_query() -> None:
    tries: list[int] = []

    async def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionRefusedError(111, "refused")
        return "answered"

    assert await patiently(flaky, what="test", every_s=0.01) == "answered"
    assert len(tries) == 3

    async def wrong() -> None:
        tries.append(1)
        raise _wrapped(PgError("23505"), IntegrityError)

    tries.clear()
    with pytest.raises(IntegrityError):
        await patiently(wrong, what="test", every_s=0.01)
    assert len(tries) == 1

    async def down() -> None:
        raise ConnectionRefusedError(111, "refused")

    with pytest.raises(ConnectionRefusedError):
        await patiently(down, what="test", within_s=0.05, every_s=0.01)

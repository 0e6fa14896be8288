"""Migration 0012: an ACME certificate there already is given its next renewal, a third of its
life before it expires (at most 30 days); a person's none; and back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from alembic import command
from sqlalchemy import text

from storage.db import alembic_config, create_engine

START = datetime(2026, 12, 1, tzinfo=UTC)
ROWS = {  # domain: (source, lifetime)
    "ninety.test": ("acme", timedelta(days=90)),
    "daily.test": ("acme", timedelta(hours=24)),
    "mine.test": ("manual", timedelta(days=90)),
}


async def _renewals(url: str) -> dict[str, datetime | None]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            found = await connection.execute(text("SELECT domain, renew_at FROM certificates"))
            return {domain: _utc(at) for domain, at in found.all()}
    finally:
        await engine.dispose()


def _utc(at: datetime | str | None) -> datetime | None:
    if isinstance(at, str):  # SQLite, read without the model's type
        at = datetime.fromisoformat(at)
    return at if at is None or at.tzinfo else at.replace(tzinfo=UTC)


async def test_0012_schedules_the_acme_certificates_there_and_goes_back(database_url: str) -> None:
    config = alembic_config(database_url)
    await asyncio.to_thread(command.upgrade, config, "0011")
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            for domain, (source, life) in ROWS.items():
                await connection.execute(
                    text("INSERT INTO certificates (domain, subject, issuer, serial, not_before, "
                         "not_after, fingerprint, added_by, added_at, source) VALUES (:domain, "
                         "'', '', '01', :start, :end, '00', 'UOWNER1', :start, :source)"),
                    {"domain": domain, "start": START, "end": START + life, "source": source},
                )  # fmt: skip
    finally:
        await engine.dispose()

    await asyncio.to_thread(command.upgrade, config, "0012")
    assert await _renewals(database_url) == {
        "ninety.test": START + timedelta(days=60),
        "daily.test": START + timedelta(hours=16),
        "mine.test": None,
    }
    await asyncio.to_thread(command.downgrade, config, "0011")
    await asyncio.to_thread(command.upgrade, config, "0012")
    assert (await _renewals(database_url))["daily.test"] == START + timedelta(hours=16)

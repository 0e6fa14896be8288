"""Fixtures of the proofs.

Every proof test runs alone (after the parallel run, see scripts/checks.sh and
tests/conftest.py): each loads the machine on purpose, or breaks for a while what all tests
share (the engine, PostgreSQL), and what it measures must be its own doing."""

from __future__ import annotations

import pytest

from services.settings import Settings


@pytest.fixture
def routed_db(routed: Settings, database_url: str) -> Settings:
    """A router of the test's own, on each database in turn (SQLite, then PostgreSQL)."""
    return routed.model_copy(update={"database_url": database_url})

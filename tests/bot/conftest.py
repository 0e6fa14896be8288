"""Fixtures of the Slack app's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.settings import Settings
from tests.serving import Bot, Serving
from tests.slack.emulator import SlackEmulator


@pytest.fixture
async def bot(
    routed: Settings,
    slack: SlackEmulator,
    tmp_path: Path,
) -> AsyncIterator[Bot]:
    async with Serving(routed, slack, tmp_path) as running:
        yield running

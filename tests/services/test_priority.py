"""clonebot's own CPU priority (services.priority); `serve` taking it is in test_traffic_cli."""

from __future__ import annotations

import logging
import os

import pytest

from services.priority import take_priority


def test_a_process_that_may_not_renice_itself_says_so_and_runs_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As a user of its own in a container: no root, no CAP_SYS_NICE."""
    started = os.getpriority(os.PRIO_PROCESS, 0)

    def refused(which: int, who: int, niceness: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refused)
    with caplog.at_level(logging.WARNING, logger="services.priority"):
        assert take_priority(started - 5) is False
    assert os.getpriority(os.PRIO_PROCESS, 0) == started
    assert f"clonebot runs at niceness {started}: CLONEBOT_NICE={started - 5} needs root" in (
        caplog.text
    )


def test_a_niceness_not_below_the_present_one_changes_nothing() -> None:
    started = os.getpriority(os.PRIO_PROCESS, 0)
    assert take_priority(started) is True
    assert take_priority(started + 3) is False
    assert os.getpriority(os.PRIO_PROCESS, 0) == started

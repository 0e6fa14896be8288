"""CLONEBOT_DISK_RESERVE in bytes, or with a unit as the other sizes; anything else refused at
start, naming the setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.settings import Settings


@pytest.mark.parametrize(
    ("given", "kept"),
    [("536870912", 512 << 20), ("400M", 400 << 20), ("2g", 2 << 30), ("0", 0)],
)
def test_the_disk_reserve_is_bytes_or_a_size(
    monkeypatch: pytest.MonkeyPatch, given: str, kept: int
) -> None:
    monkeypatch.setenv("CLONEBOT_DISK_RESERVE", given)
    assert Settings().disk_reserve_bytes == kept


@pytest.mark.parametrize("bad", ["lots", "-1", "1.5G"])
def test_a_disk_reserve_that_is_no_size_is_refused(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("CLONEBOT_DISK_RESERVE", bad)
    with pytest.raises(ValidationError, match="CLONEBOT_DISK_RESERVE"):
        Settings()

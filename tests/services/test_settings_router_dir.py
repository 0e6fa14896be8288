"""CLONEBOT_ROUTER_DIR is written into HAProxy's configuration (an lf-string among it, where
``$ % " , )`` mean something) and into runtime API commands: a folder they cannot name as it
is stops clonebot at start, naming the setting. No engine needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.cli_common import bad_setting
from services.settings import Settings


@pytest.mark.parametrize(
    "bad", ["/srv/my router", '/srv/a"b', "/srv/50%", "/srv/$HOME", "/srv/a,b)", "router", ""]
)
def test_a_router_folder_haproxy_cannot_name_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bad: str
) -> None:
    monkeypatch.setenv("CLONEBOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CLONEBOT_ROUTER_DIR", bad)
    with pytest.raises(ValidationError) as refused:
        Settings()
    said = bad_setting(refused.value)
    assert said.startswith("CLONEBOT_ROUTER_DIR: "), said
    assert "absolute path of letters, digits and . _ / - alone" in said


def test_the_default_router_folder_is_checked_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CLONEBOT_ROUTER_DIR", raising=False)
    monkeypatch.setenv("CLONEBOT_DATA_DIR", str(tmp_path / "50% off"))
    with pytest.raises(ValidationError, match=r"CLONEBOT_ROUTER_DIR \(unset: CLONEBOT_DATA_DIR"):
        Settings()


def test_a_plain_router_folder_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLONEBOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CLONEBOT_ROUTER_DIR", "/srv/clone-bot_2/router.d")
    assert Settings().router_dir == Path("/srv/clone-bot_2/router.d")
    monkeypatch.delenv("CLONEBOT_ROUTER_DIR")
    assert Settings().router_dir == tmp_path / "router"

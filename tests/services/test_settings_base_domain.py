"""CLONEBOT_BASE_DOMAIN is read as domains are kept (lower-case, no trailing dot), and a bad
one stops clonebot at start, naming the setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.settings import Settings
from tests.cli import clonebot


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("Dev.Example.COM.", "dev.example.com"),
        ("localhost", "localhost"),
        ("bücher.de", "xn--bcher-kva.de"),
    ],
)
def test_the_base_domain_is_kept_as_domains_are(
    monkeypatch: pytest.MonkeyPatch, given: str, kept: str
) -> None:
    monkeypatch.setenv("CLONEBOT_BASE_DOMAIN", given)
    assert Settings().base_domain == kept


def test_a_bad_base_domain_stops_at_once_naming_it(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setenv("CLONEBOT_BASE_DOMAIN", "my_env.example.com")  # the CLI's environment
    done = clonebot("envs", settings=settings)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "bad setting CLONEBOT_BASE_DOMAIN: Value error, 'my_env.example.com' is not a domain "
        "name (like clonebot.example.com): labels of letters, digits or hyphens, joined by dots"
    )


@pytest.mark.parametrize("bad", ["", "-dev.example.com", "a..b", ".".join(["x" * 60] * 4)])
def test_a_base_domain_that_is_no_domain_is_refused(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("CLONEBOT_BASE_DOMAIN", bad)
    with pytest.raises(ValidationError, match="CLONEBOT_BASE_DOMAIN"):
        Settings()

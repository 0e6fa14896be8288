"""How /clone's words are read: the source and name, and --ttl, --on and --snapshot wherever
they stand; anything else is answered with how to use it. No engine, no Slack."""

from __future__ import annotations

import pytest

from bot.slack.bot import Usage
from bot.slack.commands import CloneArgs, _clone_words


@pytest.mark.parametrize(
    ("words", "read"),
    [
        (["prod"], CloneArgs(["prod"], None, False, None)),
        (["prod", "dev", "--on", "staging"], CloneArgs(["prod", "dev"], None, False, "staging")),
        (["--on=staging", "prod", "--ttl", "3d"], CloneArgs(["prod"], "3d", False, "staging")),
        (
            ["prod", "--snapshot", "dev", "--ttl=never"],
            CloneArgs(["prod", "dev"], "never", True, None),
        ),
    ],
)
def test_options_stand_anywhere(words: list[str], read: CloneArgs) -> None:
    assert _clone_words(words) == read


@pytest.mark.parametrize(
    "words",
    [[], ["prod", "--on"], ["prod", "--on="], ["prod", "--ttl"], ["prod", "--onto", "x"],
     ["a", "b", "c"], ["prod", "--snapshot=yes"]],
)  # fmt: skip
def test_anything_else_is_answered_with_the_usage(words: list[str]) -> None:
    with pytest.raises(Usage, match=r"/clone SOURCE \[NAME\] .*\[--on ENGINE\]"):
        _clone_words(words)

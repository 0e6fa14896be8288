"""How /env reads its words: mentions, channels and weights as Slack sends them."""

from __future__ import annotations

import pytest

from bot.slack.commands import _channel, _user
from services.errors import BadRequest
from services.traffic.routing import parse_weights as _weights


@pytest.mark.parametrize(
    ("word", "user"),
    [("<@U012AB3CD|alice>", "U012AB3CD"), ("<@W0ABC>", "W0ABC"), ("U012AB3CD", "U012AB3CD")],
)
def test_a_mention_or_a_user_id_names_a_user(word: str, user: str) -> None:
    assert _user(word) == user


@pytest.mark.parametrize("word", ["@alice", "alice", "<#C0123|team>", "u012ab3cd", ""])
def test_anything_else_is_not_a_user(word: str) -> None:
    with pytest.raises(BadRequest, match="is not a Slack user"):
        _user(word)


@pytest.mark.parametrize(
    ("word", "channel"),
    [("<#C0123ABC|team>", "C0123ABC"), ("<#G0PRIV>", "G0PRIV"), ("C0123ABC", "C0123ABC")],
)
def test_a_channel_link_or_id_names_a_channel(word: str, channel: str) -> None:
    assert _channel(word) == channel


def test_a_channel_name_alone_is_refused_with_how_to_name_it() -> None:
    with pytest.raises(BadRequest, match=r"not a channel: name it, like #team"):
        _channel("#team")


def test_weights_are_env_equals_a_whole_number() -> None:
    assert _weights(["prod=90", "dev=10"]) == {"prod": 90, "dev": 10}
    for bad, message in [
        (["prod=ninety"], "is not ENV=WEIGHT"),
        (["prod=-5"], "is not ENV=WEIGHT"),
        (["=5"], "is not ENV=WEIGHT"),
        (["prod=50", "prod=50"], "named twice"),
    ]:
        with pytest.raises(BadRequest, match=message):
            _weights(bad)

"""Names and rewrites, without Docker."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.errors import InvalidName
from services.naming import NameRewriter, default_clone_name, twin_name, validate_name

DNS_LABEL = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")


@given(st.text(alphabet="abcxyz019-_.A ", max_size=70))
def test_a_name_is_accepted_exactly_when_it_is_a_dns_label(name: str) -> None:
    valid = DNS_LABEL.fullmatch(name) is not None
    if valid:
        assert validate_name(name) == name
    else:
        with pytest.raises(InvalidName):
            validate_name(name)


def test_default_name_is_the_first_free_number() -> None:
    assert default_clone_name("prod", set()) == "prod-clone1"
    assert default_clone_name("prod", {"prod-clone1", "prod-clone3"}) == "prod-clone2"


def test_twin_names_swap_the_project_prefix() -> None:
    assert twin_name(name="prod_default", source="prod", clone="dev") == "dev_default"
    assert twin_name(name="shared-net", source="prod", clone="dev") == "dev_shared-net"


def test_rewriter_replaces_whole_names_only() -> None:
    rewriter = NameRewriter(
        {"prod_db_1": "dev-db-1", "prod-db-1": "dev-db-1", "prod.example": "dev.example"}
    )
    env, rewrites = rewriter.rewrite_env(
        node="dev-web-1",
        env=[
            "A=postgres://prod_db_1:5432/x",
            "B=prod-db-10",
            "C=http://prod.example/path",
            "D=myprod_db_1",
            "FLAG",
        ],
    )
    assert env == [
        "A=postgres://dev-db-1:5432/x",
        "B=prod-db-10",
        "C=http://dev.example/path",
        "D=myprod_db_1",
        "FLAG",
    ]
    # the names that changed, never the values (they may hold passwords)
    assert [(r.variable, r.hosts) for r in rewrites] == [
        ("A", (("prod_db_1", "dev-db-1"),)),
        ("C", (("prod.example", "dev.example"),)),
    ]
    assert rewrites[0].describe() == "A: prod_db_1 → dev-db-1"

"""Who may do what: the whole matrix of `decide`, written out by hand, and its reasons."""

from __future__ import annotations

import pytest

from services.permissions import Access, Action, Decision, Role, decide

ENV = "shop"
OWNER, OPERATOR, VIEWER, STRANGER, ADMIN = "UOWNER", "UOPER", "UVIEW", "USTRANGE", "UADMIN"
USERS = {"owner": OWNER, "operator": OPERATOR, "viewer": VIEWER, "stranger": STRANGER}
USERS["admin"] = ADMIN
ADMINS = frozenset({ADMIN})
BOUND, ELSEWHERE = "CBOUND", "COTHER"

# Each cell holds four marks, one per situation, in this order:
#   1. the environment is bound to no channel (asked from a channel)
#   2. it is bound to #CBOUND and asked from #CBOUND
#   3. it is bound to #CBOUND and asked from #COTHER
#   4. it is bound to #CBOUND and asked from the command line (no channel)
# Y = allowed, - = refused.
MATRIX = """
action        | owner | operator | viewer | stranger | admin
view          | YY-Y  | YY-Y     | YY-Y   | ----     | YY-Y
clone         | YY-Y  | ----     | ----   | ----     | YY-Y
refresh       | YY-Y  | ----     | ----   | ----     | YY-Y
delete        | YY-Y  | ----     | ----   | ----     | YY-Y
rename        | YY-Y  | ----     | ----   | ----     | YY-Y
share         | YY-Y  | ----     | ----   | ----     | YY-Y
hand over     | YY-Y  | ----     | ----   | ----     | YY-Y
bind channel  | YY-Y  | ----     | ----   | ----     | YY-Y
set notify channel | YY-Y | ----   | ----   | ----     | YY-Y
move traffic  | YY-Y  | YY-Y     | ----   | ----     | YY-Y
adopt         | ----  | ----     | ----   | ----     | YY-Y
forget        | ----  | ----     | ----   | ----     | YY-Y
sleep or wake | YY-Y  | YY-Y     | ----   | ----     | YY-Y
extend        | YY-Y  | YY-Y     | ----   | ----     | YY-Y
protect       | YY-Y  | ----     | ----   | ----     | YY-Y
"""
SITUATIONS = ("unbound", "bound, from the bound channel", "bound, from another channel", "CLI")


def _cases() -> list[tuple[Action, str, str, bool]]:
    header, *rows = (line for line in MATRIX.strip().splitlines())
    roles = [cell.strip() for cell in header.split("|")[1:]]
    cases = []
    for row in rows:
        action, *cells = (cell.strip() for cell in row.split("|"))
        for role, marks in zip(roles, cells, strict=True):
            assert len(marks) == len(SITUATIONS), row
            for situation, mark in zip(SITUATIONS, marks, strict=True):
                cases.append((Action(action), role, situation, mark == "Y"))
    return cases


CASES = _cases()


def test_the_matrix_covers_every_action_role_and_situation() -> None:
    assert {action for action, *_ in CASES} == set(Action)
    assert len(CASES) == len(Action) * len(USERS) * len(SITUATIONS)


def _access(*, situation: str, owner: str | None = OWNER) -> Access:
    bound = frozenset() if situation == "unbound" else frozenset({BOUND})
    collaborators = {OPERATOR: Role.OPERATOR, VIEWER: Role.VIEWER}
    return Access(name=ENV, owner=owner, collaborators=collaborators, channels=bound)


def _channel(situation: str) -> str | None:
    return {
        "unbound": ELSEWHERE,
        "bound, from the bound channel": BOUND,
        "bound, from another channel": ELSEWHERE,
        "CLI": None,
    }[situation]


def _decide(*, user: str, action: Action, situation: str, owner: str | None = OWNER) -> Decision:
    return decide(
        user=user,
        action=action,
        access=_access(situation=situation, owner=owner),
        channel=_channel(situation),
        admins=ADMINS,
    )


def _assert_readable(reason: str) -> None:
    """A refusal is one short sentence a person understands, naming what it is about."""
    assert reason.strip() == reason and reason, repr(reason)
    assert len(reason) <= 120, reason
    assert "\n" not in reason
    assert ENV in reason or "admin" in reason, reason
    for leak in ("Action.", "Role.", "None", "frozenset", "Traceback", "{", "}"):
        assert leak not in reason, reason


@pytest.mark.parametrize(
    ("action", "role", "situation", "allowed"),
    CASES,
    ids=[f"{a.value}-{r}-{s}" for a, r, s, _ in CASES],
)
def test_decide(action: Action, role: str, situation: str, allowed: bool) -> None:
    decision = _decide(user=USERS[role], action=action, situation=situation)

    assert decision.allowed is allowed, decision.reason
    if not allowed:
        _assert_readable(decision.reason)


@pytest.mark.parametrize("role", list(USERS))
def test_a_bound_environment_names_its_channel_to_whoever_asks_elsewhere(role: str) -> None:
    decision = _decide(
        user=USERS[role], action=Action.VIEW, situation="bound, from another channel"
    )
    assert not decision.allowed
    assert decision.reason == f"{ENV} takes commands only in <#{BOUND}>"


def test_a_stranger_is_told_whom_to_ask() -> None:
    decision = _decide(user=STRANGER, action=Action.CLONE, situation="unbound")
    assert decision.reason == f"{ENV} belongs to <@{OWNER}>; ask them to share it with you"


@pytest.mark.parametrize(
    ("user", "role"), [(OPERATOR, "operator"), (VIEWER, "viewer")], ids=["operator", "viewer"]
)
def test_a_collaborator_is_told_what_their_role_does_not_allow(user: str, role: str) -> None:
    decision = _decide(user=user, action=Action.DELETE, situation="CLI")
    assert decision.reason == f"as a {role} of {ENV} you may not delete it"


def test_only_an_admin_may_adopt() -> None:
    for user in (OWNER, OPERATOR, VIEWER, STRANGER):
        decision = _decide(user=user, action=Action.ADOPT, situation="unbound")
        assert not decision.allowed
        assert decision.reason == "only an admin may adopt an environment"
    assert _decide(user=ADMIN, action=Action.ADOPT, situation="unbound").allowed


@pytest.mark.parametrize("action", list(Action), ids=[a.value for a in Action])
@pytest.mark.parametrize("situation", ["unbound", "CLI"])
def test_an_unowned_environment_is_for_admins_only(action: Action, situation: str) -> None:
    for user in (OWNER, OPERATOR, VIEWER, STRANGER):
        decision = _decide(user=user, action=action, situation=situation, owner=None)
        assert not decision.allowed, (user, decision)
        _assert_readable(decision.reason)
        if action in (Action.ADOPT, Action.FORGET):
            assert "only an admin" in decision.reason
        else:
            assert decision.reason == f"nobody owns {ENV} yet: an admin must adopt it first"
    assert _decide(user=ADMIN, action=action, situation=situation, owner=None).allowed


def test_only_an_admin_may_forget() -> None:
    for user in (OWNER, OPERATOR, VIEWER, STRANGER):
        decision = _decide(user=user, action=Action.FORGET, situation="CLI")
        assert not decision.allowed
        assert decision.reason == "only an admin may forget an environment"
    assert _decide(user=ADMIN, action=Action.FORGET, situation="CLI").allowed


def test_nobody_is_an_admin_unless_configured() -> None:
    decision = decide(
        user=ADMIN,
        action=Action.ADOPT,
        access=Access(name=ENV, owner=None),
        channel=None,
        admins=frozenset(),
    )
    assert not decision.allowed

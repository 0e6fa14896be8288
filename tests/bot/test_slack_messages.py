"""What users see in Slack: progress, results with their buttons, notifications, modals, Home.

Every message and view also goes through the emulator's Block Kit checks, and through
slack_sdk's own (``to_dict()`` validates), as it would before being sent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.models.views import View

from bot.playground.contract import check_blocks, check_view
from bot.slack import ids
from bot.slack.commands import usage
from bot.slack.messages import (
    KINDS,
    Message,
    clone_done,
    clone_failed,
    clone_started,
    domains_swapped,
    failover_set,
    failure_text,
    handed_over,
    job_title,
    progress_message,
    refusal,
    result_message,
    split_changed,
)
from bot.slack.views import (
    CloneForm,
    EnvironmentSummary,
    FieldError,
    RouteSummary,
    SplitForm,
    clone_modal,
    field_errors,
    home_view,
    read_clone_modal,
    read_split_modal,
    split_modal,
)
from services.job_locks import JobKind
from storage.models import Job
from tests.slack.signing import view_submission

OWNER = "UOWNER1"
BASE = "clonebot.test"
STARTED = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
MIB = 1024 * 1024


def job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": "a1b2c3",
        "kind": "clone",
        "state": "running",
        "environment": "dev-copy",
        "source": "prod",
        "requester": OWNER,
        "params": {},
        "steps": [],
        "created_at": STARTED,
        "started_at": STARTED,
    }
    return Job(**(values | fields))


def succeeded(**fields: Any) -> Job:
    result = {
        "nodes": ["dev-copy-web-1", "dev-copy-db-1"],
        "started": True,
        "elapsed_ms": 12_300,
        "freeze_ms": 42,
        "warnings": ["db-1 could not be paused: it was stopped and restarted"],
        "rewrites": [
            {"node": "dev-copy-web-1", "variable": "DB_HOST", "hosts": [["prod-db-1", "x-db-1"]]},
            # a record written before rewrites lost their values: the values are not shown
            {"node": "dev-copy-web-2", "variable": "DB_URL", "old": "pg://a:PASS@h", "new": "…"},
        ],
        "ports": [
            {"node": "dev-copy-web-1", "container_port": "80/tcp", "old": "8080", "new": "32768"}
        ],
    }
    return job(**({"state": "succeeded", "freeze_ms": 42, "result": result} | fields))


def sent(message: Message) -> dict[str, Any]:
    """The message as chat.postMessage would send it, once the emulator's checks pass."""
    doc = message.to_dict()
    assert check_blocks(doc["blocks"]) == []
    assert doc["text"]
    return doc


def shown(view: View) -> dict[str, Any]:
    doc = view.to_dict()
    assert check_view(doc) == []
    return doc


def texts(doc: dict[str, Any]) -> str:
    """Every text a user reads in the blocks, one per line."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc["blocks"])
    return "\n".join(found)


def buttons(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        element["action_id"]: element
        for block in doc["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
    }


def node_steps(node: str, *rows: tuple[str, str, dict[str, int]]) -> list[dict[str, Any]]:
    return [{"step": step, "node": node, "state": state, **extra} for step, state, extra in rows]


# progress


def test_progress_shows_each_nodes_step_bytes_elapsed_and_freeze() -> None:
    steps = [
        {"step": "networks", "node": None, "state": "done", "ms": 40},
        *node_steps("dev-copy-web-1", ("create", "done", {"ms": 50}), ("start", "done", {})),
        *node_steps(
            "dev-copy-db-1",
            ("pre-copy", "running", {"copied": 12 * MIB, "total": 40 * MIB}),
            ("commit", "done", {"ms": 300}),  # done meanwhile: the running copy still shows
        ),
        *node_steps(
            "dev-copy-cache-1",
            ("pre-copy", "done", {"copied": 64 * MIB, "total": 64 * MIB, "ms": 2000}),
            ("create", "running", {}),
        ),
        {"step": "freeze", "node": "prod-cache-1", "state": "done", "ms": 35},
    ]
    doc = sent(progress_message(job(steps=steps), now=STARTED + timedelta(seconds=12)))
    seen = texts(doc)

    assert doc["blocks"][0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Cloning prod → dev-copy", "emoji": True},
    }
    assert "Asked by <@UOWNER1>" in seen
    assert "12.0 s elapsed" in seen
    assert "source frozen 35 ms" in seen
    assert "2/4 done" in seen
    assert ":white_check_mark: networks\n" in seen
    assert ":white_check_mark: `dev-copy-web-1` start" in seen
    # a running copy shows how far it is; a finished one how fast it went, on its later steps
    assert ":hourglass_flowing_sand: `dev-copy-db-1` pre-copy · 12.0 MiB / 40.0 MiB (30 %)" in seen
    line = ":hourglass_flowing_sand: `dev-copy-cache-1` create · 64.0 MiB / 64.0 MiB at 32.0 MiB/s"
    assert line in seen
    assert "prod-cache-1" not in seen  # the freeze is a fact of the source, not a node's line
    assert doc["text"] == "Cloning prod → dev-copy: 2/4 done"


def test_a_queued_job_waits_and_other_kinds_say_what_they_do() -> None:
    queued = texts(sent(progress_message(job(state="queued", steps=[]), now=STARTED)))
    assert "waiting for a worker" in queued

    refresh = job(kind="refresh", environment="dev-copy", source="prod")
    rename = job(kind="rename", environment="dev-copy", source=None, params={"to": "staging"})
    delete = job(kind="delete", source="prod")
    assert "Refreshing dev-copy from prod" in texts(sent(progress_message(refresh, now=STARTED)))
    assert "Renaming dev-copy → staging" in texts(sent(progress_message(rename, now=STARTED)))
    assert "Deleting dev-copy" in texts(sent(progress_message(delete, now=STARTED)))


def test_a_waiting_job_says_what_it_waits_for() -> None:
    """A queued job names its wait (a slot, as its step says); a clone waiting while another
    job has the source frozen says so, not that the source is frozen for it."""
    slot = "waits for a slot (CLONEBOT_MAX_JOBS=4)"
    queued = texts(sent(progress_message(job(state="queued", step=slot), now=STARTED)))
    assert slot in queued and "waiting for a worker" not in queued

    freeze = {"step": "freeze", "node": "prod-db-1", "state": "running"}
    wait = {"step": "wait", "node": None, "state": "running"}
    waiting = texts(sent(progress_message(job(steps=[freeze, wait]), now=STARTED)))
    assert "waits for prod's freeze" in waiting
    assert "source frozen" not in waiting and ":hourglass_flowing_sand: wait" not in waiting
    waited = job(steps=[freeze, wait | {"state": "done"}])
    frozen = texts(sent(progress_message(waited, now=STARTED)))
    assert "source frozen for the final copy" in frozen and "waits for" not in frozen


def test_forty_nodes_stay_within_slacks_limits_with_running_ones_first() -> None:
    steps = []
    for n in range(1, 41):
        name = f"dev-copy-a-rather-long-layer-name-{n:02}"
        state = "running" if n > 36 else "done"
        steps += node_steps(name, ("pre-copy", state, {"copied": n * MIB, "total": 80 * MIB}))
    doc = sent(progress_message(job(steps=steps), now=STARTED + timedelta(minutes=3, seconds=5)))

    assert len(doc["blocks"]) <= 50
    section = next(b for b in doc["blocks"] if b["type"] == "section")["text"]["text"]
    assert len(section) <= 3000
    lines = section.splitlines()
    assert lines[-1].startswith("… and ") and lines[-1].endswith(" more")
    assert int(lines[-1].split()[2]) == 40 - (len(lines) - 1)
    assert all(":hourglass_flowing_sand:" in line for line in lines[:4])
    assert "3 min 5 s elapsed" in texts(doc)


# results


def test_a_finished_clone_offers_swap_split_open_and_delete() -> None:
    doc = sent(result_message(succeeded(), base_domain=BASE))
    seen = texts(doc)
    actions = buttons(doc)

    assert doc["blocks"][0]["text"]["text"] == "Cloned prod → dev-copy"
    assert (
        "*dev-copy* is running at <http://dev-copy.clonebot.test/|dev-copy.clonebot.test>" in seen
    )
    assert "2 nodes in 12.3 s" in seen
    assert "*prod* was frozen 42 ms at most" in seen
    assert "dev-copy-web-1: `DB_HOST: prod-db-1 → x-db-1`" in seen
    assert "dev-copy-web-2: `DB_URL`" in seen and "PASS" not in json.dumps(doc)
    assert "port 80/tcp is on host port 32768 (not 8080)" in seen
    assert ":warning: db-1 could not be paused" in seen
    assert list(actions) == [ids.SWAP, ids.SPLIT, ids.OPEN, ids.SLEEP, ids.DELETE]

    swap = actions[ids.SWAP]
    assert swap["text"]["text"] == "Swap domains"
    assert swap["style"] == "primary"
    assert ids.decode_target(swap["value"]) == ids.Target("dev-copy", "prod")
    assert swap["confirm"]["text"]["text"].startswith("Swap the domains of *dev-copy* and *prod*?")
    assert swap["confirm"]["confirm"]["text"] == "Swap"

    split = actions[ids.SPLIT]
    assert split["text"]["text"] == "Split traffic…"
    assert "confirm" not in split and "style" not in split
    assert ids.decode_target(split["value"]) == ids.Target("dev-copy", "prod")

    assert actions[ids.OPEN]["url"] == "http://dev-copy.clonebot.test/"

    delete = actions[ids.DELETE]
    assert delete["style"] == "danger"
    assert delete["confirm"]["style"] == "danger"
    assert "Delete *dev-copy*" in delete["confirm"]["text"]["text"]
    assert ids.decode_target(delete["value"]) == ids.Target("dev-copy")
    assert ids.decode_target(actions[ids.SLEEP]["value"]) == ids.Target("dev-copy")
    assert "confirm" not in actions[ids.SLEEP]  # a stopped clone keeps everything: no loss


def test_links_carry_the_routers_port_unless_it_is_80() -> None:
    """The router listens on 8080 by default: a link without the port would not open."""
    doc = sent(result_message(succeeded(), base_domain=BASE, port=8080))
    assert buttons(doc)[ids.OPEN]["url"] == "http://dev-copy.clonebot.test:8080/"
    link = "<http://dev-copy.clonebot.test:8080/|dev-copy.clonebot.test>"
    assert f"*dev-copy* is running at {link}" in texts(doc)
    assert link in texts(sent(clone_done(succeeded(), base_domain=BASE, port=8080)))
    on_80 = sent(result_message(succeeded(), base_domain=BASE, port=80))
    assert buttons(on_80)[ids.OPEN]["url"] == "http://dev-copy.clonebot.test/"


@pytest.mark.parametrize("state", ["failed", "rolled back"])
def test_a_failed_clone_says_what_failed_that_nothing_is_left_and_offers_no_buttons(
    state: str,
) -> None:
    failed = job(state=state, error="the disk is full: <needed 3 GiB> & more")
    doc = sent(result_message(failed, base_domain=BASE))
    seen = texts(doc)

    assert doc["blocks"][0]["text"]["text"] == "Cloning prod → dev-copy failed"
    assert "the disk is full: &lt;needed 3 GiB&gt; &amp; more" in seen
    assert "Nothing was left behind" in seen
    assert buttons(doc) == {}
    assert "failed" in doc["text"]


def test_a_snapshot_is_created_not_started_and_has_nothing_to_swap_or_open() -> None:
    snapshot = succeeded()
    snapshot.result = (snapshot.result or {}) | {"started": False}
    doc = sent(result_message(snapshot, base_domain=BASE))

    assert "*dev-copy* was created, not started" in texts(doc)
    assert list(buttons(doc)) == [ids.WAKE, ids.DELETE]
    assert buttons(doc)[ids.WAKE]["text"]["text"] == "Start"


def test_a_rename_opens_the_new_name_and_a_delete_offers_nothing() -> None:
    renamed = succeeded(kind="rename", source=None, params={"to": "staging"})
    doc = sent(result_message(renamed, base_domain=BASE))
    assert "*dev-copy* is now *staging*" in texts(doc)
    assert {k: b.get("url") for k, b in buttons(doc).items()} == {
        ids.OPEN: "http://staging.clonebot.test/"
    }

    deleted = sent(result_message(job(kind="delete", state="succeeded"), base_domain=BASE))
    assert "*dev-copy* was deleted" in texts(deleted)
    assert buttons(deleted) == {}


def test_long_warnings_are_cut_to_slacks_limits() -> None:
    message = result_message(succeeded(result={"warnings": ["x" * 5000] * 20}), base_domain=BASE)
    details = sent(message)["blocks"][2]["text"]["text"]
    assert len(details) <= 3000
    assert details.endswith(" more")


# notifications and short replies


def test_team_notifications_are_one_sentence_and_who() -> None:
    notes = {
        "started": clone_started(job()),
        "done": clone_done(succeeded(), base_domain=BASE),
        "failed": clone_failed(job(state="rolled back", error="no space left")),
        "swapped": domains_swapped("prod", "dev-copy", "UOWNER1"),
        "split": split_changed("shop.example.com", {"prod": 9, "dev-copy": 1}, True, "UOWNER1"),
        "failover": failover_set("shop.example.com", "prod", "dev-copy", "UOWNER1"),
        "deleted": clone_done(job(kind="delete", state="succeeded", result={}), base_domain=BASE),
        "handed": handed_over("dev-copy", "UOWNER1", "UBOB0001", "UADMIN1"),
    }
    docs = {name: sent(message) for name, message in notes.items()}
    assert all([b["type"] for b in d["blocks"]] == ["section", "context"] for d in docs.values())

    assert "Cloning prod → dev-copy" in docs["started"]["text"]
    assert "by <@UOWNER1> · job a1b2c3" in texts(docs["started"])
    assert "*dev-copy* is running" in docs["done"]["text"]
    assert "no space left" in docs["failed"]["text"]
    assert "Nothing was left behind" in docs["failed"]["text"]
    assert "*prod* and *dev-copy* swapped their domains" in docs["swapped"]["text"]
    assert "*prod* 90 %, *dev-copy* 10 %; each visitor stays on one side" in docs["split"]["text"]
    assert "served by *prod*; *dev-copy* takes over" in docs["failover"]["text"]
    assert "*dev-copy* was deleted" in docs["deleted"]["text"]
    assert "now belongs to <@UBOB0001> (was <@UOWNER1>)" in docs["handed"]["text"]
    assert "by <@UADMIN1>" in texts(docs["handed"])


def test_refusals_and_usage_are_short_and_say_what_to_type() -> None:
    assert refusal("prod belongs to <@UOWNER1>") == (
        ":no_entry: Nothing was done: prod belongs to <@UOWNER1>"
    )
    listing = usage("/env")
    for sub in ("list", "info", "delete", "rename", "refresh", "share", "owner", "adopt"):
        assert f"`/env {sub}" in listing
    for sub in ("domain add|remove", "swap", "split", "failover", "notify", "help"):
        assert f"`/env {sub}" in listing
    assert usage("nonsense") == listing
    assert usage("split").startswith("Usage: `/env split DOMAIN ENV=90 OTHER=10 [sticky]`")
    assert "`/clone SOURCE [NAME] [--ttl 3d] [--snapshot] [--on ENGINE]`" in usage("/clone")


def test_button_values_carry_names_only() -> None:
    assert ids.encode_target(ids.Target("dev-copy", "prod")) == "dev-copy|prod"
    assert ids.decode_target("dev-copy") == ids.Target("dev-copy")
    for bad in ("", "a||b", "a|b|c", "|b"):
        with pytest.raises(ValueError):
            ids.decode_target(bad)


# modals


def submitted(view: View, **changes: dict[str, Any]) -> dict[str, Any]:
    """The modal as Slack submits it: each input as it was opened, except ``changes``
    (by block id)."""
    doc = shown(view)
    values = {}
    for block in doc["blocks"]:
        if block["type"] == "input":
            element = block["element"]
            state = changes.get(block["block_id"], _initial(element))
            values[block["block_id"]] = {element["action_id"]: {"type": element["type"], **state}}
    submission: dict[str, Any] = view_submission(user_id=OWNER, view=doc, values=values)["view"]
    return submission


def _initial(element: dict[str, Any]) -> dict[str, Any]:
    kind = element["type"]
    if kind in ("static_select", "radio_buttons"):
        return {"selected_option": element.get("initial_option")}
    if kind == "checkboxes":
        return {"selected_options": element.get("initial_options", [])}
    if kind == "conversations_select":
        return {"selected_conversation": element.get("initial_conversation")}
    return {"value": element.get("initial_value")}


def option(value: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": value}, "value": value}


def test_the_clone_modal_offers_the_sources_and_reads_back_what_was_chosen() -> None:
    view = clone_modal(["prod", "shop"], default_name="prod-clone1", channel="C0CHAN1")
    doc = shown(view)
    assert doc["callback_id"] == ids.CLONE_MODAL
    assert doc["title"]["text"] == "Clone an environment"
    source = next(b for b in doc["blocks"] if b["block_id"] == ids.CLONE_SOURCE)["element"]
    assert [o["value"] for o in source["options"]] == ["prod", "shop"]

    assert read_clone_modal(submitted(view)) == CloneForm(
        source="prod", name="prod-clone1", snapshot=False, notify=None, channel="C0CHAN1"
    )
    changed = submitted(
        view,
        clone_source={"selected_option": option("shop")},
        clone_name={"value": " shop-test "},
        clone_options={"selected_options": [option(ids.SNAPSHOT)]},
        clone_notify={"selected_conversation": "C0TEAM1"},
        clone_ttl={"value": " 3d "},
    )
    assert read_clone_modal(changed) == CloneForm(
        source="shop", name="shop-test", snapshot=True, notify="C0TEAM1", channel="C0CHAN1",
        ttl="3d",
    )  # fmt: skip
    with pytest.raises(FieldError) as bad_ttl:
        read_clone_modal(submitted(view, clone_ttl={"value": "soon"}))
    assert bad_ttl.value.block_id == ids.CLONE_TTL
    assert "An expiry is a whole number with s, m, h, d or w" in bad_ttl.value.message
    # another source, the name left as filled in: that source's own default name
    other = submitted(view, clone_source={"selected_option": option("shop")})
    assert read_clone_modal(other).name is None
    with pytest.raises(FieldError) as error:
        read_clone_modal(submitted(view, clone_name={"value": "  "}))
    assert error.value.block_id == ids.CLONE_NAME


def test_the_clone_modal_lists_at_most_a_hundred_sources_and_explains_when_there_are_none() -> None:
    many = shown(clone_modal([f"env-{n}" for n in range(130)], default_name="x", channel=None))
    source = many["blocks"][0]
    assert len(source["element"]["options"]) == 100
    assert "30 more are not listed" in source["hint"]["text"]

    empty = shown(clone_modal([], default_name="x", channel=None))
    assert "submit" not in empty
    assert "only its owner or an admin may clone it" in texts(empty)


def test_the_split_modal_reads_back_a_split_or_a_failover() -> None:
    view = split_modal("dev-copy", others=["prod", "shop"], domains=["shop.example.com"])
    doc = shown(view)
    assert doc["callback_id"] == ids.SPLIT_MODAL
    assert len(doc["title"]["text"]) <= 24

    form = read_split_modal(submitted(view))
    assert form == SplitForm(
        env="dev-copy", other="prod", domain="shop.example.com", weight=10, sticky=False,
        mode="split",
    )  # fmt: skip
    assert form.weights == {"dev-copy": 10, "prod": 90}

    failover = read_split_modal(
        submitted(
            view,
            split_mode={"selected_option": option("backup")},
            split_sticky={"selected_options": [option(ids.STICKY)]},
        )
    )
    assert (failover.primary, failover.backup, failover.sticky) == ("prod", "dev-copy", True)


@pytest.mark.parametrize("weight", ["101", "-1", "ten", None])
def test_a_bad_weight_is_shown_on_its_field(weight: str | None) -> None:
    view = split_modal("dev-copy", others=["prod"], domains=["shop.example.com"])
    with pytest.raises(FieldError) as error:
        read_split_modal(submitted(view, split_weight={"value": weight}))
    assert field_errors(**{error.value.block_id: error.value.message}) == {
        "response_action": "errors",
        "errors": {ids.SPLIT_WEIGHT: "A whole number from 0 to 100."},
    }


def test_the_split_modal_explains_when_there_is_no_domain_to_split() -> None:
    doc = shown(split_modal("dev-copy", others=["prod"], domains=[]))
    assert "submit" not in doc
    assert "/env domain add dev-copy DOMAIN" in texts(doc)


# App Home


def test_the_home_tab_lists_environments_domains_routes_and_jobs() -> None:
    envs = [
        EnvironmentSummary("prod", OWNER, "owner", {"db": 1, "web": 2}),
        EnvironmentSummary("dev-copy", "UBOB0001", "operator", {"web": 1}, cloned_from="prod"),
    ]
    routes = [RouteSummary("shop.example.com", "split", "prod", "dev-copy", 90, sticky=True)]
    doc = shown(
        home_view(
            user=OWNER,
            environments=envs,
            domains={"prod": ["shop.example.com"]},
            routes=routes,
            jobs=[job(step="pre-copy")],
            base_domain=BASE,
        )
    )
    seen = texts(doc)

    assert doc["type"] == "home"
    assert "*prod* · yours" in seen
    assert "db ×1, web ×2" in seen
    assert "<http://prod.clonebot.test/|prod.clonebot.test>" in seen
    assert "Domains: shop.example.com" in seen
    assert "shop.example.com: *prod* 90 %, *dev-copy* 10 % (sticky)" in seen
    assert "*dev-copy* · <@UBOB0001>'s, you are operator · cloned from *prod*" in seen
    assert ":hourglass_flowing_sand: Cloning prod → dev-copy · pre-copy" in seen


def test_an_empty_home_tab_says_how_to_start_and_a_full_one_fits() -> None:
    empty = shown(
        home_view(user=OWNER, environments=[], domains={}, routes=[], jobs=[], base_domain=BASE)
    )
    assert "`/clone SOURCE NAME`" in texts(empty)
    assert "No job is running." in texts(empty)

    many = [EnvironmentSummary(f"env-{n}", OWNER, "owner", {"web": 1}) for n in range(60)]
    full = shown(
        home_view(user=OWNER, environments=many, domains={}, routes=[], jobs=[], base_domain=BASE)
    )
    assert len(full["blocks"]) <= 100
    assert "… and 20 more" in texts(full)


def test_every_job_kind_has_its_words() -> None:
    """A new kind of job must say what it does, and what its failure leaves."""
    assert set(KINDS) == set(JobKind)
    for kind in JobKind:
        failed = job(kind=kind.value, state="failed", error="boom")
        assert KINDS[kind].doing in job_title(failed)
        assert KINDS[kind].after_failure.format(env=failed.environment) in failure_text(failed)


def test_a_clone_onto_another_engine_says_which_in_its_title() -> None:
    here = job(engine="local", source_engine="local")
    assert job_title(here) == "Cloning prod → dev-copy"
    there = job(engine="west", source_engine="local")
    assert job_title(there) == "Cloning prod → dev-copy on west"
    assert job_title(there, done=True) == "Cloned prod → dev-copy on west"

"""The playground in a real browser (headless Chromium): `clonebot serve` without Slack tokens,
a demo of its own, and what a user sees when cloning it, swapping its domain, being refused,
and filling the clone form wrongly. Screenshots go to CLONEBOT_SCREENSHOTS (default: the
test's tmp_path); with CLONEBOT_UPDATE_SCREENSHOTS=1 two of them also go to docs/."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from bot.playground.people import OWNER, STRANGER
from bot.slack import ids
from tests.playground.browser import (
    Stage,
    chromium,
    clean_up,
    containers_of,
    make_demo,
    message,
    message_about,
    open_page,
    press,
    random_names,
    send_command,
    shot,
    stage_settings,
    start_serve,
    stop_serve,
    switch_user,
    wait_for,
    wait_until,
)

# one worker for the module: its stage (a demo, `clonebot serve`, a browser) is made once
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.xdist_group("browser")]
DOCS = Path(__file__).resolve().parents[2] / "docs"
CLONE_S = 60  # a clone of the demo takes a few seconds; the engine is shared
# every version of every message the page shows in #playground, in order: a progress message
# edited in place is one ts with several texts
RECORD = """
window.seen = [];
const list = document.getElementById("messages");
new MutationObserver(() => list.querySelectorAll(".message").forEach((m) => {
  const last = window.seen.filter((s) => s.ts === m.dataset.ts).pop();
  const buttons = m.querySelectorAll("[data-action-id=swap_domains]").length > 0;
  const text = m.innerText;
  if (!last || last.text !== text) window.seen.push({ts: m.dataset.ts, text, buttons});
})).observe(list, {childList: true, subtree: true, characterData: true});
"""


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    """`clonebot serve` (no Slack tokens) over a demo under a random name and domain."""
    folder = tmp_path_factory.mktemp("browser")
    settings = stage_settings(folder / "data")
    demo, domain = random_names()
    running: Stage | None = None
    try:
        make_demo(settings, name=demo, domain=domain)
        running = start_serve(settings, demo=demo, domain=domain, log=folder / "serve.log")
        yield running
    finally:
        if running is not None:
            stop_serve(running)
        clean_up(settings, demo=demo, domain=domain)


@pytest.fixture(scope="module")
def driver(stage: Stage) -> Iterator[WebDriver]:
    browser = chromium()
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CLONEBOT_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _docs(name: str) -> Path | None:
    return DOCS / name if os.environ.get("CLONEBOT_UPDATE_SCREENSHOTS") == "1" else None


def _clone(driver: WebDriver, stage: Stage, copy: str) -> str:
    """Type the clone as olivia; the ts of the message that ends with the clone's buttons."""
    send_command(driver, f"/clone {stage.demo} {copy}")
    return message_about(driver, copy, has=f"[data-action-id={ids.SWAP}]", timeout_s=CLONE_S)


def _serves(stage: Stage, env: str) -> str:
    """The demo's domain's page, once it names ``env``."""

    def page() -> str | None:
        text = stage.router_page(stage.domain)
        return text if f"<b id=env>{env}</b>" in text else None

    return wait_until(page, what=f"page of {env} on {stage.domain}", timeout_s=15)


def _links(stage: Stage) -> list[str]:
    with urllib.request.urlopen(f"{stage.base}playground/links", timeout=5) as resp:
        return [env["name"] for env in json.load(resp)["environments"]]


def test_clone_swap_and_back_then_delete(driver: WebDriver, stage: Stage, shots: Path) -> None:
    copy = f"{stage.demo}-x"
    open_page(driver, stage.base, user=OWNER)
    assert "Served by environment" in _serves(stage, stage.demo)
    driver.execute_script(RECORD)
    ts = _clone(driver, stage, copy)

    # one message, edited in place from progress to the final buttons
    seen = [s for s in driver.execute_script("return window.seen") if copy in s["text"]]
    assert {s["ts"] for s in seen} == {ts}, seen
    assert len(seen) >= 2 and not seen[0]["buttons"] and seen[-1]["buttons"], seen
    done = message(driver, ts)
    for action in (ids.SWAP, ids.SPLIT, ids.DELETE):
        assert done.find_element(By.CSS_SELECTOR, f"[data-action-id={action}]").is_displayed()
    assert done.find_element(By.CSS_SELECTOR, "a.sk-button[href]").get_attribute("href")
    message_about(driver, copy, pane="#team-messages")
    shot(driver, shots, "clone-done", docs=_docs("playground-clone.png"))

    dialog = press(driver, ts, ids.SWAP)
    assert "Swap domains?" in dialog.text and copy in dialog.text
    shot(driver, shots, "confirm-swap")
    dialog.find_element(By.CSS_SELECTOR, ".confirm-ok").click()
    swapped = message_about(driver, "swapped their domains", pane="#team-messages", timeout_s=15)
    assert copy in message(driver, swapped, pane="#team-messages").text
    assert copy in _serves(stage, copy)

    # the same button swaps them back
    press(driver, ts, ids.SWAP).find_element(By.CSS_SELECTOR, ".confirm-ok").click()
    _serves(stage, stage.demo)

    dialog = press(driver, ts, ids.DELETE)
    assert "Delete the clone?" in dialog.text
    dialog.find_element(By.CSS_SELECTOR, ".confirm-ok").click()
    message_about(driver, f"{copy} was deleted", pane="#team-messages", timeout_s=CLONE_S)
    wait_until(lambda: copy not in _links(stage), what=f"{copy} gone", timeout_s=CLONE_S)
    assert containers_of(stage.settings, copy) == []
    assert stage.demo in _links(stage) and _serves(stage, stage.demo)


def test_a_strangers_click_is_refused_to_him_alone(
    driver: WebDriver, stage: Stage, shots: Path
) -> None:
    copy = f"{stage.demo}-y"
    open_page(driver, stage.base, user=OWNER)
    ts = _clone(driver, stage, copy)

    switch_user(driver, STRANGER)
    press(driver, ts, ids.DELETE).find_element(By.CSS_SELECTOR, ".confirm-ok").click()
    refused = message_about(driver, "Nothing was done", has=".only-you", timeout_s=15)
    refusal = message(driver, refused)
    assert "ephemeral" in str(refusal.get_attribute("class")).split()
    assert refusal.find_element(By.CSS_SELECTOR, ".only-you").text == "Only visible to you"
    assert "Nothing was done" in refusal.text and "belongs to" in refusal.text, refusal.text
    shot(driver, shots, "stranger-refused")

    switch_user(driver, OWNER)
    wait_until(
        lambda: not driver.find_elements(By.CSS_SELECTOR, f"#messages [data-ts='{refused}']"),
        what="olivia's view without sam's refusal",
        timeout_s=5,
    )
    assert message(driver, ts).is_displayed()
    assert copy in _links(stage) and containers_of(stage.settings, copy)


def test_the_clone_form_shows_a_bad_name_under_its_field(
    driver: WebDriver, stage: Stage, shots: Path
) -> None:
    open_page(driver, stage.base, user=OWNER)
    send_command(driver, "/clone")
    modal = wait_for(driver, f".modal[data-callback-id={ids.CLONE_MODAL}]")
    source = modal.find_element(By.CSS_SELECTOR, f".block[data-block-id={ids.CLONE_SOURCE}] select")
    Select(source).select_by_visible_text(stage.demo)
    name = modal.find_element(By.CSS_SELECTOR, f".block[data-block-id={ids.CLONE_NAME}] input")
    name.clear()
    name.send_keys("Bad Name!")
    modal.find_element(By.CSS_SELECTOR, ".modal-submit").click()

    error = wait_for(driver, f".input-error[data-error-for={ids.CLONE_NAME}]")
    block = modal.find_element(By.CSS_SELECTOR, f".block[data-block-id={ids.CLONE_NAME}]")
    assert error in block.find_elements(By.CSS_SELECTOR, ".input-error") and error.text
    assert modal.is_displayed() and name.get_attribute("value") == "Bad Name!"
    shot(driver, shots, "form-error", docs=_docs("playground-form-error.png"))
    modal.find_element(By.CSS_SELECTOR, ".modal-close").click()
    wait_until(lambda: not driver.find_elements(By.CSS_SELECTOR, ".modal"), what="modal closed")

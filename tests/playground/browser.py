"""What the browser tests drive: `clonebot serve` without Slack tokens over a demo of their
own, and headless Chromium on its page (Debian's chromium and chromedriver: nothing is
downloaded, Selenium Manager is never run)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from services.context import open_services
from services.demo import ensure_demo, remove_demo
from services.docker import DockerClient
from services.environments import PROJECT
from services.settings import Settings
from tests.conftest import _free_port, remove_projects

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
T = TypeVar("T")
HEADLESS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900")
# Chromium's own calls home (updates, accounts, sync) stay on this machine: no name resolves
# but the page's 127.0.0.1, so not even a DNS query leaves (checked with strace)
OFFLINE = (
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
)


@dataclass
class Stage:
    """A running `clonebot serve` and the demo it plays with."""

    settings: Settings
    demo: str  # random: the engine is shared with other tests
    domain: str
    proc: subprocess.Popen[bytes]
    log: Path
    base: str = ""  # the printed playground address

    def router_page(self, host: str) -> str:
        """What the router answers for ``host`` ("" while it answers no page)."""
        request = urllib.request.Request(
            f"http://{self.settings.router_bind}/", headers={"Host": host}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                page: str = resp.read().decode()
                return page
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return ""


def stage_settings(data_dir: Path) -> Settings:
    """Settings of the stage's own: its data dir (SQLite there), a free port, a free router."""
    return Settings(  # pydantic-settings: fields are given by their aliases
        CLONEBOT_DATA_DIR=data_dir,
        DATABASE_URL="",
        PORT=_free_port(),
        CLONEBOT_ROUTER_BIND=f"127.0.0.1:{_free_port()}",
        CLONEBOT_ROUTER_DIR=data_dir / "router",
        CLONEBOT_HTTP_HOST="127.0.0.1",
    )


def make_demo(settings: Settings, *, name: str, domain: str) -> None:
    async def make() -> None:
        async with open_services(settings) as svc:
            await ensure_demo(svc, name=name, domain=domain)

    asyncio.run(make())


def start_serve(settings: Settings, *, demo: str, domain: str, log: Path) -> Stage:
    env = {
        **os.environ,
        "DOCKER_HOST": settings.docker_host,
        "DATABASE_URL": settings.database_url,
        "CLONEBOT_DATA_DIR": str(settings.data_dir),
        "CLONEBOT_ROUTER_BIND": settings.router_bind,
        "CLONEBOT_ROUTER_DIR": str(settings.router_dir),
        "PORT": str(settings.port),
        "CLONEBOT_HTTP_HOST": "127.0.0.1",
    }
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        env.pop(name, None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve"], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    stage = Stage(settings=settings, demo=demo, domain=domain, proc=proc, log=log)
    stage.base = wait_until(lambda: _printed_address(stage), what="the playground's address")
    return stage


def _printed_address(stage: Stage) -> str | None:
    assert stage.proc.poll() is None, f"serve ended: {stage.log.read_text()}"
    for line in stage.log.read_text().splitlines():
        if line.startswith("Playground: "):
            return line.removeprefix("Playground: ").strip()
    return None


def stop_serve(stage: Stage) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 15 s."""
    if stage.proc.poll() is None:
        stage.proc.send_signal(signal.SIGTERM)
        try:
            stage.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            stage.proc.kill()
            stage.proc.wait(timeout=5)


def clean_up(settings: Settings, *, demo: str, domain: str) -> None:
    """The demo through the delete service, then whatever is left of it and its clones."""

    async def clean() -> None:
        try:
            async with open_services(settings) as svc:
                await remove_demo(svc, name=demo, domain=domain)
        finally:
            async with DockerClient(settings.docker_host) as docker:
                await remove_projects(docker, await projects_of(docker, demo=demo))

    asyncio.run(clean())


async def projects_of(docker: DockerClient, *, demo: str) -> set[str]:
    """The demo's Compose project and its clones' (named ``<demo>-…``)."""
    found = set()
    for lister in (docker.list_containers, docker.list_networks, docker.list_volumes):
        for item in await lister(labels=[PROJECT]):
            project = (item.get("Labels") or {}).get(PROJECT, "")
            if project == demo or project.startswith(f"{demo}-"):
                found.add(project)
    return found


def containers_of(settings: Settings, env: str) -> list[Any]:
    async def look() -> list[Any]:
        async with DockerClient(settings.docker_host) as docker:
            return list(await docker.list_containers(labels=[f"{PROJECT}={env}"]))

    return asyncio.run(look())


def random_names() -> tuple[str, str]:
    """A demo's name and domain no other test uses."""
    token = secrets.token_hex(3)
    return f"demo{token}", f"shop-{token}.localhost"


# --- the browser -------------------------------------------------------------------------------
def chromium() -> WebDriver:
    """Headless Chromium through the system chromedriver. The driver's path is given, so
    Selenium Manager (which would download a driver) is skipped; SE_OFFLINE forbids it too."""
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*HEADLESS, *OFFLINE):
        options.add_argument(arg)
    # the page is 1280x757: headless Chromium keeps 143 px of the window for its frame
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_until(check: Callable[[], T | None], *, what: str, timeout_s: float = 30) -> T:
    """The first truthy answer of ``check``, polled every 0.1 s, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.1)


def wait_for(
    driver: WebDriver, css: str, *, timeout_s: float = 10, root: WebElement | None = None
) -> WebElement:
    """The first displayed element matching ``css`` (under ``root``), waited for."""

    def find(_: WebDriver) -> WebElement | None:
        found = (root or driver).find_elements(By.CSS_SELECTOR, css)
        return next((e for e in found if e.is_displayed()), None)

    element = WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(find, f"no {css}")
    assert element is not None
    return element


def open_page(driver: WebDriver, base: str, *, user: str) -> None:
    driver.get(base)
    wait_for(driver, f"#user-switcher option[value={user}]")
    switch_user(driver, user)


def switch_user(driver: WebDriver, user: str) -> None:
    Select(driver.find_element(By.CSS_SELECTOR, "select#user-switcher")).select_by_value(user)


def send_command(driver: WebDriver, text: str) -> None:
    composer = wait_for(driver, "#composer")
    composer.clear()
    composer.send_keys(text + "\n")


_FIND = """
const [pane, text, has] = arguments;
const found = [...document.querySelectorAll(`${pane} .message`)].reverse()
  .find((m) => m.innerText.includes(text) && (!has || m.querySelector(has)));
return found ? found.dataset.ts : null;
"""


def message_about(
    driver: WebDriver, text: str, *, has: str = "", pane: str = "#messages", timeout_s: float = 10
) -> str:
    """The ts of the last message of ``pane`` that says ``text`` (and holds ``has``), waited
    for. Looked up in one script: a message edited in place is a new element."""
    ts: str = WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(
        lambda d: d.execute_script(_FIND, pane, text, has),
        f"no message saying {text!r} with {has!r} in {pane}",
    )
    return ts


def message(driver: WebDriver, ts: str, *, pane: str = "#messages") -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f"{pane} .message[data-ts='{ts}']")


def press(driver: WebDriver, ts: str, action_id: str) -> WebElement:
    """Click a button of the message ``ts``; the confirm dialog it opens."""

    def click(_: WebDriver) -> bool:
        message(driver, ts).find_element(By.CSS_SELECTOR, f"[data-action-id={action_id}]").click()
        return True

    WebDriverWait(
        driver, 10, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    ).until(click, f"cannot press {action_id} of {ts}")
    return wait_for(driver, ".confirm-dialog")


def shot(driver: WebDriver, folder: Path, name: str, *, docs: Path | None = None) -> Path:
    """A screenshot in ``folder``, and in docs/ too when ``docs`` names the file there."""
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    if docs is not None:
        docs.write_bytes(path.read_bytes())
    return path

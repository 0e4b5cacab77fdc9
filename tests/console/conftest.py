"""The console's stack and browser: a real gateway process in front of the two real flashsale replicas, and one
headless Debian Chromium (never a downloaded one) driven by Playwright for the whole module."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.conftest import TEST_REDIS_URL, Processes, free_port, redis_url_for

CHROMIUM = "/usr/bin/chromium"
# Every console request comes from 127.0.0.1 and one admin: the limits are far above what a run sends.
GENEROUS_LIMITS = {
    f"GATEWAY_{name}_{kind}": "1000000"
    for name in ("USER", "IP", "PURCHASE_USER", "PURCHASE_IP", "ADMIN")
    for kind in ("RATE", "BURST")
}


@dataclass(frozen=True)
class ConsoleStack:
    """The gateway the console is served by, and a way to mint its dev tokens."""

    url: str

    @property
    def console(self) -> str:
        return f"{self.url}/console/"

    def token(self, user_id: str, roles: list[str]) -> str:
        """A dev token minted by the gateway itself."""
        resp = httpx.post(f"{self.url}/api/auth/token", json={"user_id": user_id, "roles": roles}, timeout=5)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["access_token"])

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An admin call to flashsale through the gateway, as an ops script makes it."""
        headers = {"Authorization": f"Bearer {self.token('ops-script', ['admin'])}"}
        return httpx.request(method, f"{self.url}/api/flashsale/admin{path}", headers=headers, timeout=5, **kwargs)


@pytest.fixture(scope="module")
def console_stack(replicas: list[str]) -> Iterator[ConsoleStack]:
    """A gateway process with dev tokens on, routing flashsale to the session's replicas."""
    dead = f"http://127.0.0.1:{free_port()}"
    env = {
        "REDIS_URL": redis_url_for(2),
        "GATEWAY_DEV_TOKENS": "true",
        "GATEWAY_FLASHSALE_URLS": ",".join(replicas),
        "GATEWAY_HEALTH_INTERVAL": "0.2",
        # The live view reads the alerts the flashsale replicas publish, in their Redis.
        "GATEWAY_CONSOLE_LIVE_ALERTS_REDIS_URL": TEST_REDIS_URL,
        **{f"GATEWAY_{name}_URLS": dead for name in ("INVENTORY", "COUPON", "ORDER")},
        **GENEROUS_LIMITS,
    }
    procs = Processes()
    try:
        url = procs.start("gateway.main:app", env)
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/api/flashsale/sales", timeout=2).status_code != 200:
            assert time.monotonic() < deadline, "the gateway does not reach flashsale"
            time.sleep(0.1)
        yield ConsoleStack(url)
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile per test (its own sessionStorage), in English, on a clock eight hours from UTC:
    the console shows and reads every time as UTC whatever the operator's zone."""
    ctx = browser.new_context(locale="en-US", timezone_id="Asia/Shanghai")
    ctx.set_default_timeout(5_000)
    yield ctx
    ctx.close()


def script_failure(text: str) -> bool:
    """A console message that says a script broke or the CSP refused something (not an API's 4xx answer)."""
    return "Content Security Policy" in text or "Refused to" in text or "Uncaught" in text


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A tab that fails the test on any script error or CSP violation of the console."""
    tab = context.new_page()
    failures: list[str] = []
    tab.on("pageerror", lambda exc: failures.append(str(exc)))
    tab.on("console", lambda msg: failures.append(msg.text) if script_failure(msg.text) else None)
    yield tab
    assert failures == []

"""The ops console in a real Chromium, against a real gateway and real flashsale replicas: sign in, create,
edit, run and stop a sale through the screens, and read each action back in the audit log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.console.conftest import ConsoleStack


def sign_in(page: Page, stack: ConsoleStack, user_id: str) -> None:
    """Open the console and sign in with a dev admin token for `user_id`."""
    page.goto(stack.console)
    page.get_by_label("Your user id").fill(user_id)
    page.get_by_role("button", name="Sign in with a dev admin token").click()
    expect(page.get_by_role("heading", name="Sales", exact=True)).to_be_visible()
    expect(page.get_by_text(f"Signed in as {user_id}")).to_be_visible()


def draft_sale(stack: ConsoleStack, title: str) -> dict[str, Any]:
    """A draft sale made through the admin API, opening in an hour."""
    now = datetime.now(UTC)
    body = {
        "sku": "SKU-CONSOLE",
        "title": title,
        "price": 4_999,
        "original_price": 9_999,
        "quantity": 50,
        "per_user_limit": 2,
        "starts_at": (now + timedelta(hours=1)).isoformat(),
        "ends_at": (now + timedelta(hours=3)).isoformat(),
    }
    resp = stack.admin("POST", "/sales", json=body)
    assert resp.status_code == 201, resp.text
    sale: dict[str, Any] = resp.json()
    return sale


def titles(stack: ConsoleStack) -> list[str]:
    """Every sale's title, as the admin API lists them."""
    resp = stack.admin("GET", "/sales", params={"limit": 500})
    assert resp.status_code == 200, resp.text
    return [s["title"] for s in resp.json()]


def test_console_files_are_served_without_a_token_under_a_strict_content_security_policy(
    console_stack: ConsoleStack,
) -> None:
    expected = {"": "text/html", "console.css": "text/css", "js/app.js": "text/javascript"}
    for name, media_type in expected.items():
        resp = httpx.get(console_stack.console + name, timeout=5)
        assert resp.status_code == 200, name
        assert resp.headers["content-type"].startswith(media_type)
        csp = resp.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert resp.headers["x-content-type-options"] == "nosniff"
    missing = httpx.get(console_stack.console + "js/../../pyproject.toml", timeout=5)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    moved = httpx.get(f"{console_stack.url}/console", timeout=5)
    assert moved.status_code == 308 and moved.headers["location"] == "/console/"


def test_a_shopper_token_is_refused_with_the_gateways_message_and_no_sale_is_shown(
    console_stack: ConsoleStack, page: Page
) -> None:
    draft_sale(console_stack, f"Hidden {uuid.uuid4().hex[:6]}")
    shopper = console_stack.token("shopper-1", ["customer"])
    refused = httpx.get(
        f"{console_stack.url}/api/flashsale/admin/sales", headers={"Authorization": f"Bearer {shopper}"}, timeout=5
    )
    assert refused.status_code == 403
    page.goto(console_stack.console)
    page.get_by_label("Admin bearer token (from your identity provider)").fill(shopper)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#login-problem")).to_have_text(refused.json()["detail"])
    expect(page.locator("#sales-table")).to_have_count(0)
    assert page.evaluate("sessionStorage.length") == 0

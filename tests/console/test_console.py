"""The ops console in a real Chromium, against a real gateway and real flashsale replicas: sign in, create,
edit, run and stop a sale through the screens, and read each action back in the audit log."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from playwright.sync_api import Page, expect
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from services.flashsale.briefings import anomalies
from services.flashsale.models import Briefing
from tests.conftest import TEST_DB_URL
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
    page_etag = httpx.get(console_stack.console, timeout=5).headers["etag"]
    unchanged = httpx.get(console_stack.console, headers={"If-None-Match": page_etag}, timeout=5)
    assert unchanged.status_code == 304 and unchanged.content == b""
    # The gateway's own module sits next to the files: a path out of the console's folder finds nothing.
    for name in ("%2e%2e/console.py", "..%2fconsole.py", "js/%2e%2e/%2e%2e/console.py", "nothing.js"):
        missing = httpx.get(console_stack.console + name, timeout=5)
        assert missing.status_code == 404, name
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


def fill_sale_form(page: Page, title: str, quantity: str) -> None:
    """Fill the new-sale form with a sale opening in an hour."""
    now = datetime.now(UTC)
    page.get_by_label("SKU").fill("SKU-CONSOLE")
    page.get_by_label("Title").fill(title)
    page.get_by_label("Sale price").fill("99.00")
    page.get_by_label("Original price").fill("199.99")
    page.get_by_label("Quantity (units)").fill(quantity)
    page.get_by_label("Limit per buyer").fill("2")
    page.get_by_label("Starts (UTC)").fill((now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    page.get_by_label("Ends (UTC)").fill((now + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"))


def test_a_bad_field_shows_the_apis_message_at_that_field_and_a_good_form_creates_the_sale(
    console_stack: ConsoleStack, page: Page
) -> None:
    title = f"Phone {uuid.uuid4().hex[:6]}"
    sign_in(page, console_stack, "ops-carol")
    page.get_by_role("link", name="New sale", exact=True).first.click()
    expect(page.get_by_role("heading", name="New sale")).to_be_visible()
    unlabelled = "[...document.querySelectorAll('input, select, textarea')].filter((el) => !el.labels.length).length"
    assert page.evaluate(unlabelled) == 0
    fill_sale_form(page, title, quantity="0")
    page.get_by_role("button", name="Create sale").click()

    quantity = page.get_by_label("Quantity (units)")
    expect(page.locator("#f-quantity-error")).to_have_text("Input should be greater than or equal to 1")
    expect(quantity).to_have_attribute("aria-invalid", "true")
    expect(quantity).to_be_focused()
    expect(page.locator("#f-title-error")).to_have_text("")
    assert title not in titles(console_stack)

    quantity.fill("40")
    page.get_by_role("button", name="Create sale").click()
    expect(page.get_by_role("heading", name=f": {title}")).to_be_visible()
    expect(page.locator("#sale-state")).to_have_text("draft")
    assert titles(console_stack).count(title) == 1

    page.get_by_role("link", name="Sales", exact=True).click()
    row = page.locator("#sales-table tbody tr", has_text=title)
    expect(row.locator(".price")).to_have_text("$99.00")
    expect(row.locator(".remaining")).to_have_text("40")
    expect(row.locator(".countdown")).to_contain_text("starts in 0")


def test_an_admin_edits_starts_pauses_resumes_and_stops_a_sale_only_after_typing_its_title(
    console_stack: ConsoleStack, page: Page
) -> None:
    sale = draft_sale(console_stack, f"Watch {uuid.uuid4().hex[:6]}")
    sign_in(page, console_stack, "ops-dave")
    page.goto(f"{console_stack.console}#/sales/{sale['id']}/edit")
    page.get_by_label("Ends (UTC)").fill("2020-01-01T00:00")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#f-ends_at-error")).to_have_text("ends_at must be after starts_at")
    assert stack_sale(console_stack, sale["id"])["ends_at"] == sale["ends_at"]
    title = sale["title"] + " v2"
    page.get_by_label("Ends (UTC)").fill(sale["ends_at"][:16])
    page.get_by_label("Title").fill(title)
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("heading", name=f": {title}")).to_be_visible()

    state = page.locator("#sale-state")
    for action, after in (("Schedule", "scheduled"), ("Start now", "live"), ("Pause", "paused"), ("Resume", "live")):
        page.get_by_role("button", name=action).click()
        expect(state).to_have_text(after)
    assert stack_sale(console_stack, sale["id"])["state"] == "live"
    expect(page.locator("#sale-remaining")).to_have_text("50 of 50")
    page.get_by_label("Units to add").fill("0")
    page.get_by_role("button", name="Restock").click()
    expect(page.locator("#restock-error")).to_have_text("Input should be greater than or equal to 1")
    page.get_by_label("Units to add").fill("10")
    page.get_by_role("button", name="Restock").click()
    expect(page.locator("#sale-remaining")).to_have_text("60 of 60")

    stop = page.get_by_role("button", name="Stop sale…")
    stop.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(title)
    expect(page.get_by_label(f"Type the sale's title, {title}, to confirm")).to_be_focused()
    page.get_by_label(f"Type the sale's title, {title}, to confirm").fill("Watch")
    dialog.get_by_role("button", name=f"Stop {title}").click()
    expect(page.locator("#confirm-error")).to_have_text("That is not the sale's title: the sale was not stopped")
    assert stack_sale(console_stack, sale["id"])["state"] == "live"
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    expect(stop).to_be_focused()
    assert stack_sale(console_stack, sale["id"])["state"] == "live"

    stop.click()
    page.get_by_label(f"Type the sale's title, {title}, to confirm").fill(title)
    page.get_by_role("dialog").get_by_role("button", name=f"Stop {title}").click()
    expect(state).to_have_text("ended")
    assert stack_sale(console_stack, sale["id"])["state"] == "ended"
    expect(page.get_by_role("button", name="Resume")).to_have_count(0)

    page.get_by_role("link", name="Audit log").click()
    rows = page.locator("#audit-table tbody tr")
    expect(rows.locator(".action")).to_have_text(
        ["stop", "add_stock", "resume", "pause", "start", "schedule", "update", "create"]
    )
    expect(rows.locator(".actor")).to_have_text(["ops-dave"] * 7 + ["ops-script"])
    update = page.locator('tr[data-action="update"]')
    expect(update).to_contain_text(f"title: {sale['title']} → {title}")
    expect(update).not_to_contain_text("ends_at")  # put back as it was: the seconds it was shown without stay
    expect(page.locator('tr[data-action="pause"]')).to_contain_text("state: live → paused")


def stack_sale(stack: ConsoleStack, sale_id: int) -> dict[str, Any]:
    """The sale as the admin API reports it now."""
    resp = stack.admin("GET", f"/sales/{sale_id}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_a_token_the_gateway_stops_accepting_sends_the_admin_back_to_the_login_form_with_its_message(
    console_stack: ConsoleStack, page: Page
) -> None:
    sale = draft_sale(console_stack, f"Lamp {uuid.uuid4().hex[:6]}")
    sign_in(page, console_stack, "ops-erin")
    page.evaluate("sessionStorage.setItem('console.token', 'not-a-token')")
    refused = httpx.get(
        f"{console_stack.url}/api/flashsale/admin/sales/{sale['id']}",
        headers={"Authorization": "Bearer not-a-token"},
        timeout=5,
    )
    assert refused.status_code == 401
    page.goto(f"{console_stack.console}#/sales/{sale['id']}")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("#login-problem")).to_have_text(refused.json()["detail"])
    assert page.evaluate("sessionStorage.length") == 0


async def _store_briefing(sale_id: int, body: dict[str, Any]) -> None:
    """A briefing as a flashsale replica keeps it (services/flashsale/briefings.py writes the same row)."""
    engine = create_async_engine(TEST_DB_URL)
    try:
        async with engine.begin() as conn:
            now = datetime.now(UTC)
            await conn.execute(insert(Briefing).values(sale_id=sale_id, period_start=now, at=now, body=body))
    finally:
        await engine.dispose()


def test_the_briefings_page_lists_each_briefing_with_its_figures_and_anomalies(
    console_stack: ConsoleStack, page: Page
) -> None:
    sale = draft_sale(console_stack, f"Briefed phone {uuid.uuid4().hex[:6]}")
    stock = {"quantity": 10, "remaining": 3, "reserved": 5, "sold": 2}
    orders = {"orders": 7, "paid": 2, "gmv": 9_998, "payment_attempts": 30, "payment_success_rate": 0.5}
    body = {
        "type": "sale.briefing",
        "sale_id": sale["id"],
        "title": sale["title"],
        "currency": "USD",
        "stock": stock,
        "orders": orders,
        "sell_out_in_seconds": 90,
        "anomalies": anomalies(stock, orders, taken_in_period=4, sellout_s=None),
    }
    # The browser tests drive Playwright's sync API inside pytest's running loop: the write runs on a thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _store_briefing(sale["id"], body)).result()
    sign_in(page, console_stack, "ops-briefed")
    page.get_by_role("link", name="Briefings").click()
    row = page.locator(f'#briefings-table tr[data-sale="{sale["id"]}"]')
    expect(row).to_contain_text("3 of 10 left, 5 reserved, 2 sold")
    expect(row).to_contain_text("7 orders, 2 paid, $99.98")
    expect(row).to_contain_text("50 %")
    expect(row).to_contain_text("90 s")
    expect(row.locator('li[data-code="PAYMENT_SUCCESS_LOW"]')).to_contain_text("check the providers")

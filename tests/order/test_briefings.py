"""Sale briefings: two flashsale replicas brief each live sale once per period, with the order figures the
real order service reports, the stock, a sell-out estimate and the anomalies ops must look at, to the alert
webhooks and in `GET /admin/briefings`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from services.flashsale.config import FlashSaleSettings
from services.flashsale.main import create_app
from services.order.config import OrderSettings
from services.order.service import OrderService
from tests.conftest import (
    TEST_REDIS_URL,
    PaySims,
    WebhookReceiver,
    admin_headers,
    customer_headers,
    live_sale,
    order_processes,
    serving,
    wait_for,
)
from tests.order.conftest import in_process_settings, unpaid_order

DB_BASE = "orders_briefings"


@pytest.fixture(scope="module")
def order_url() -> Iterator[str]:
    """A real order process answering the admin API (it follows no purchase streams)."""
    with order_processes(DB_BASE, {"ORDER_PURCHASE_STREAM_REGISTRY": "test:briefings:none"}) as (url,):
        yield url


@pytest.fixture(scope="module")
def order_settings(order_url: str, paysim: PaySims) -> OrderSettings:
    return in_process_settings(DB_BASE, paysim, registry="test:briefings:none")


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver of this module's own (the session's receives the other tests' alerts)."""
    hooks = WebhookReceiver()
    async with serving(hooks.server):
        yield hooks


@pytest.fixture
async def replicas(database: str, order_url: str, receiver: WebhookReceiver) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Two in-process flashsale replicas briefing every second, asking the real order service."""
    async with AsyncExitStack() as stack:
        clients = []
        for n in (1, 2):
            settings = FlashSaleSettings(
                env="test",
                database_url=database,
                redis_url=TEST_REDIS_URL,
                alert_webhooks=receiver.url,
                order_url=order_url,
                catalog_refresh_seconds=0.2,
                briefing_interval_seconds=1,
                briefing_check_seconds=0.1,
                replica_id=f"briefing-{n}",
            )
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            clients.append(
                await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://fs"))
            )
        yield clients


def _briefings(receiver: WebhookReceiver, sale_id: int) -> list[dict[str, Any]]:
    return [h for h in receiver.received if h.get("type") == "sale.briefing" and h.get("sale_id") == sale_id]


async def test_each_live_sale_is_briefed_once_per_period_with_the_order_figures_and_its_anomalies(
    replicas: list[httpx.AsyncClient], receiver: WebhookReceiver, service: OrderService
) -> None:
    first, second = replicas
    steady = await live_sale(first, quantity=10, per_user_limit=1, title="Steady phone")
    for n in range(4):
        buy = await second.post(
            f"/sales/{steady['id']}/purchase", json={"quantity": 1}, headers=customer_headers(f"b{n}", f"k{n}")
        )
        assert buy.status_code == 202, buy.text
    for _ in range(3):
        await unpaid_order(service, sale_id=steady["id"], unit_price=9_900)
    fast = await live_sale(first, quantity=2, per_user_limit=2, title="Gone in seconds")
    sold = await first.post(f"/sales/{fast['id']}/purchase", json={"quantity": 2}, headers=customer_headers("f", "k"))
    assert sold.status_code == 202, sold.text

    async def briefed() -> list[dict[str, Any]]:
        return [b for b in _briefings(receiver, steady["id"]) if (b["orders"] or {}).get("orders") == 3]

    brief = (await wait_for(briefed, timeout=15))[0]
    assert brief["title"] == "Steady phone"
    assert brief["stock"] == {"quantity": 10, "remaining": 6, "reserved": 4, "sold": 0}
    assert brief["orders"]["paid"] == 0 and brief["orders"]["gmv"] == 0
    assert brief["units_per_minute"] > 0 and brief["sell_out_in_seconds"] >= 0

    async def fast_briefed() -> list[dict[str, Any]]:
        return _briefings(receiver, fast["id"])

    fast_brief = (await wait_for(fast_briefed, timeout=15))[0]
    assert "SOLD_OUT_FAST" in [a["code"] for a in fast_brief["anomalies"]]
    assert fast_brief["sell_out_in_seconds"] is None and fast_brief["stock"]["remaining"] == 0

    async def listed_periods() -> list[dict[str, Any]] | None:
        params = {"sale_id": steady["id"]}
        found: list[dict[str, Any]] = (
            await first.get("/admin/briefings", params=params, headers=admin_headers())
        ).json()
        return found if len(found) >= 3 else None

    listed = await wait_for(listed_periods, timeout=20)  # more periods, both replicas briefing
    periods = [b["period_start"] for b in listed]
    assert len(set(periods)) == len(periods)  # one briefing per period
    # The webhooks got exactly the briefings kept: neither replica sent one the other had written.
    sent = {b["period_start"] for b in _briefings(receiver, steady["id"])}
    assert len(_briefings(receiver, steady["id"])) == len(sent)
    assert sent <= {b["body"]["period_start"] for b in listed}
    shopper = await first.get("/admin/briefings", headers=customer_headers("b0"))
    assert shopper.status_code == 403

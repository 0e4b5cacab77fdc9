"""A small sale, bought, ordered and paid, read back from the services' /metrics as ops and SREs see it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from services.common.contracts import purchase_stream
from services.common.migrate import upgrade
from services.flashsale.metrics import refresh_stock_gauges
from services.order.config import OrderSettings
from services.order.main import create_app
from tests.conftest import (
    TEST_REDIS_URL,
    PaySims,
    customer_headers,
    db_name_for,
    db_url_for,
    drop_database,
    live_sale,
    wait_for,
)

PRICE = 2_500


@pytest.fixture(scope="module")
async def orders(paysim: PaySims, app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The order service in-process on a database of its own, its gauges read every 0.2 s."""
    await drop_database(db_name_for("orders_metrics"))
    await asyncio.to_thread(upgrade, "order", db_url_for("orders_metrics"))
    settings = OrderSettings(
        env="test",
        database_url=db_url_for("orders_metrics"),
        redis_url=TEST_REDIS_URL,
        paysim_primary_url=paysim.primary,
        paysim_backup_url=paysim.backup,
        stream_discovery_seconds=0.2,
        gauge_interval_seconds=0.2,
        replica_id="order-metrics",
    )
    application = create_app(settings)
    transport = httpx.ASGITransport(app=application)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=transport, base_url="http://order") as c,
    ):
        yield c


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a service's /metrics: (name, labels) -> value."""
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: Any) -> float | None:
    """One sample's value, or None when it is not exposed."""
    return samples.get((name, frozenset((k, str(v)) for k, v in labels.items())))


async def buy(client: httpx.AsyncClient, sale_id: int, user: str, qty: int, key: str) -> httpx.Response:
    """A purchase attempt."""
    return await client.post(f"/sales/{sale_id}/purchase", json={"quantity": qty}, headers=customer_headers(user, key))


async def test_a_small_sale_shows_its_purchases_orders_gmv_and_stock_in_the_metrics(
    client: httpx.AsyncClient, orders: httpx.AsyncClient, app: FastAPI
) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=3, price=PRICE, original_price=5_000)
    sid = sale["id"]
    for _ in range(2):
        assert (await client.get(f"/sales/{sid}")).status_code == 200
    bought = {"m-ann": 2, "m-bob": 3, "m-cat": 1}
    rids = {}
    for user, qty in bought.items():
        resp = await buy(client, sid, user, qty, f"{user}-1")
        assert resp.status_code == 202, resp.text
        rids[user] = resp.json()["reservation_id"]
    assert (await buy(client, sid, "m-ann", 2, "m-ann-1")).status_code == 202  # a replay sells nothing more
    refused = await buy(client, sid, "m-bob", 1, "m-bob-2")
    assert refused.json()["code"] == "PURCHASE_LIMIT_EXCEEDED"

    order_ids = {}
    for user in ("m-ann", "m-bob", "m-cat"):
        found = await orders.get(
            f"/orders/by-reservation/{rids[user]}", params={"wait": 10}, headers=customer_headers(user)
        )
        assert found.status_code == 200, found.text
        order_ids[user] = found.json()["id"]
    for user in ("m-ann", "m-bob"):
        paid = await orders.post(f"/orders/{order_ids[user]}/pay", headers=customer_headers(user, f"pay-{user}"))
        assert paid.status_code == 200, paid.text

    flashsale = await scrape(client)
    assert value(flashsale, "flashsale_sale_views_total", sale_id=sid) == 2
    assert value(flashsale, "flashsale_sale_units_accepted_total", sale_id=sid) == 6
    assert value(flashsale, "flashsale_sale_purchases_total", sale_id=sid, outcome="accepted") == 3
    assert value(flashsale, "flashsale_sale_purchases_total", sale_id=sid, outcome="replay") == 1
    assert value(flashsale, "flashsale_sale_purchases_total", sale_id=sid, outcome="limit_exceeded") == 1
    assert value(flashsale, "service_dependency_up", dependency="redis") == 1
    assert value(flashsale, "service_dependency_up", dependency="postgres") == 1

    async def stock_settled() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        # The paid orders reach flashsale through the outbox and the events stream; then the job reads Redis.
        await refresh_stock_gauges(app.state.service.core)
        samples = await scrape(client)
        return samples if value(samples, "flashsale_sale_sold_units", sale_id=sid) == 5 else None

    stock = await wait_for(stock_settled)
    assert value(stock, "flashsale_sale_remaining_units", sale_id=sid) == 10 - 6
    assert value(stock, "flashsale_sale_reserved_units", sale_id=sid) == 1
    assert value(stock, "flashsale_sale_quantity_units", sale_id=sid) == 10
    assert value(stock, "flashsale_sale_live", sale_id=sid) == 1
    assert value(stock, "flashsale_sale_sellout_seconds", sale_id=sid) is None  # not sold out

    order = await scrape(orders)
    assert value(order, "order_sale_orders_created_total", sale_id=sid) == 3
    assert value(order, "order_sale_orders_paid_total", sale_id=sid) == 2
    assert value(order, "order_sale_gmv_paid_minor_total", sale_id=sid, currency="USD") == (2 + 3) * PRICE
    assert (value(order, "order_creation_lag_seconds_count") or 0) >= 3

    async def backlog_read() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        samples = await scrape(orders)
        stream = purchase_stream(sid)
        lag = value(samples, "stream_group_lag_entries", stream=stream, group="order")
        return samples if lag == 0 else None

    backlog = await wait_for(backlog_read)
    stream = purchase_stream(sid)
    assert value(backlog, "stream_group_pending_entries", stream=stream, group="order") == 0
    assert value(backlog, "stream_dead_letter_entries", stream=stream) == 0
    assert value(backlog, "order_outbox_pending_events") is not None

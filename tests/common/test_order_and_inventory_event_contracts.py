"""The order and inventory events, as their real producers write them, match their contracts: the order
service in-process (its outbox relay, real paysim processes, PostgreSQL) fed by the flashsale app's purchase
script, and the inventory service in-process (its alert outbox relay and reminder job)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from services.common.contracts import ALERTS_STREAM, catalog, purchase_stream
from services.common.migrate import upgrade
from services.inventory.config import InventorySettings
from services.inventory.main import create_app as create_inventory_app
from services.order.config import OrderSettings
from services.order.main import create_app as create_order_app
from tests.common.test_contracts import validated_entries
from tests.conftest import (
    TEST_REDIS_URL,
    PaySims,
    admin_headers,
    customer_headers,
    db_name_for,
    db_url_for,
    drop_database,
    free_port,
    live_sale,
    wait_for,
)

ORDER_DB = "orders_contracts"
INVENTORY_DB = "inventory_contracts"


@asynccontextmanager
async def _running(application: FastAPI, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=application)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=transport, base_url=base_url) as client,
    ):
        yield client


async def _migrated(service: str, base: str) -> str:
    await drop_database(db_name_for(base))
    await asyncio.to_thread(upgrade, service, db_url_for(base))
    return db_url_for(base)


# ---------------------------------------------------------------- order events


@pytest.fixture(scope="module")
async def orders(paysim: PaySims, app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, OrderSettings]]:
    """The order service following a registry of this module's own and publishing to a stream nobody else reads;
    its coupon service does not answer, so an order that names coupons stays unpriced."""
    tag = uuid.uuid4().hex[:8]
    settings = OrderSettings(
        env="test",
        database_url=await _migrated("order", ORDER_DB),
        redis_url=TEST_REDIS_URL,
        db_pool_size=4,
        paysim_primary_url=paysim.primary,
        paysim_backup_url=paysim.backup,
        purchase_stream_registry=f"test:contracts:{tag}:streams",
        events_stream=f"test:contracts:{tag}:order-events",
        stream_discovery_seconds=0.2,
        coupon_url=f"http://127.0.0.1:{free_port()}",
        pricing_retry_interval_seconds=0.2,
        replica_id="order-contracts",
    )
    async with _running(create_order_app(settings), "http://order") as client:
        yield client, settings


async def _buy(client: httpx.AsyncClient, sale_id: int, user: str, coupons: list[str] | None = None) -> str:
    body: dict[str, Any] = {"quantity": 1, "coupon_ids": coupons} if coupons else {"quantity": 1}
    resp = await client.post(f"/sales/{sale_id}/purchase", json=body, headers=customer_headers(user, "buy"))
    assert resp.status_code == 202, resp.text
    rid: str = resp.json()["reservation_id"]
    return rid


async def _post(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
    resp = await client.post(path, headers=headers)
    assert resp.status_code == 200, resp.text


async def test_every_order_event_matches_its_contract(
    client: httpx.AsyncClient, orders: tuple[httpx.AsyncClient, OrderSettings], redis: Redis
) -> None:
    order_client, settings = orders
    sale = await live_sale(client, quantity=10, per_user_limit=1)
    await redis.sadd(settings.purchase_stream_registry, purchase_stream(sale["id"]))
    users = ["oc-fulfilled", "oc-refunded", "oc-cancelled", "oc-coupons"]
    coupons = {"oc-coupons": ["CP-9"]}
    reservations = {user: await _buy(client, sale["id"], user, coupons.get(user)) for user in users}
    order_ids = {}
    for user, rid in reservations.items():
        resp = await order_client.get(
            f"/orders/by-reservation/{rid}", params={"wait": 15}, headers=customer_headers(user)
        )
        assert resp.status_code == 200, resp.text
        order_ids[user] = resp.json()["id"]

    for user in ("oc-fulfilled", "oc-refunded"):
        await _post(order_client, f"/orders/{order_ids[user]}/pay", customer_headers(user, "pay"))
    await _post(order_client, f"/admin/orders/{order_ids['oc-fulfilled']}/fulfil", admin_headers())
    await _post(order_client, f"/admin/orders/{order_ids['oc-refunded']}/refund", admin_headers())
    for user in ("oc-cancelled", "oc-coupons"):  # the second closes before its coupons were priced
        await _post(order_client, f"/orders/{order_ids[user]}/cancel", customer_headers(user, "cancel"))

    expected = {
        "order.created": 4,
        "order.paid": 2,
        "order.fulfilled": 1,
        "order.refunded": 1,
        "order.cancelled": 2,
        "order.coupons_released": 1,
    }

    async def published() -> list[dict[str, Any]] | None:
        events = await validated_entries(redis, catalog.ORDER_EVENTS, settings.events_stream)
        return events if Counter(e["type"] for e in events) == expected else None

    events = await wait_for(published, timeout=20)
    assert {e["order_id"] for e in events} == set(order_ids.values())
    assert len({e["event_id"] for e in events}) == len(events)
    paid = [e for e in events if e["type"] == "order.paid"]
    assert all(e["state"] == "paid" and e["reason"] == "payment_succeeded" and e.get("provider") for e in paid)
    created = [e for e in events if e["type"] == "order.created"]
    assert {(e["sale_id"], e["total"]) for e in created} == {(sale["id"], sale["price"])}
    await redis.delete(settings.events_stream, settings.purchase_stream_registry)


# ---------------------------------------------------------------- inventory alerts


async def test_inventory_alerts_and_reminders_match_their_contract(redis: Redis) -> None:
    settings = InventorySettings(
        env="test",
        database_url=await _migrated("inventory", INVENTORY_DB),
        redis_url=TEST_REDIS_URL,
        replica_id="inventory-contracts",
        alert_relay_interval_seconds=0.1,
        reminder_interval_seconds=0.5,
        reminder_check_seconds=0.2,
    )
    sku = f"CONTRACT-{os.urandom(4).hex()}"
    async with _running(create_inventory_app(settings), "http://inventory") as inventory:
        body = {"sku": sku, "name": "Contract phone", "initial_stock": 10, "low_stock_threshold": 5}
        assert (await inventory.post("/admin/skus", json=body, headers=admin_headers())).status_code == 201
        take = {"delta": -6, "reason": "sold in store"}
        resp = await inventory.post(f"/admin/skus/{sku}/adjust", json=take, headers=admin_headers())
        assert resp.status_code == 200, resp.text

        async def alerted() -> list[dict[str, Any]] | None:
            alerts = [e for e in await validated_entries(redis, catalog.ALERTS, ALERTS_STREAM) if e.get("sku") == sku]
            return alerts if {e["type"] for e in alerts} == {"stock.low", "stock.replenish_reminder"} else None

        alerts = await wait_for(alerted, timeout=15)
    low = next(e for e in alerts if e["type"] == "stock.low")
    assert (low["source"], low["available"], low["threshold"], low["v"]) == ("inventory", 4, 5, 1)
    reminder = next(e for e in alerts if e["type"] == "stock.replenish_reminder")
    assert reminder["reminder_id"] == low["reminder_id"] and reminder["id"].startswith("inventory:")

"""A sale's stock comes from the warehouse and goes back to it; Redis can be rebuilt from the record.

inventory and order run as real processes; flashsale runs in-process and talks to both over HTTP.
They share a Redis database of their own (flushed here on purpose to play a Redis crash that lost data).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from services.common.migrate import upgrade
from services.flashsale.config import FlashSaleSettings
from services.flashsale.main import create_app
from services.flashsale.reconciliation import SaleReconciler
from services.flashsale.store import bought_key, reservations_key, sale_key
from tests.conftest import (
    PaySims,
    Processes,
    admin_headers,
    customer_headers,
    db_name_for,
    db_url_for,
    drop_database,
    redis_url_for,
    sale_body,
    wait_for,
)

REDIS_URL = redis_url_for(1)
DEADLINE_SECONDS = 3


@dataclass
class Stack:
    flashsale: httpx.AsyncClient
    inventory: httpx.AsyncClient
    orders: httpx.AsyncClient
    redis: Redis
    reconciler: SaleReconciler


@pytest.fixture(scope="module")
async def stack(paysim: PaySims) -> AsyncIterator[Stack]:
    """inventory + order processes, flashsale in-process with FLASHSALE_INVENTORY_URL/ORDER_URL set."""
    for name in ("inventory_sales", "orders_sales", "flashsale_sales"):
        await drop_database(db_name_for(name))
    await asyncio.to_thread(upgrade, "inventory", db_url_for("inventory_sales"))
    await asyncio.to_thread(upgrade, "order", db_url_for("orders_sales"))
    await asyncio.to_thread(upgrade, "flashsale", db_url_for("flashsale_sales"))
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    await redis.flushdb()
    procs = Processes()
    try:
        inventory_url = await asyncio.to_thread(
            procs.start,
            "services.inventory.main:app",
            {"INVENTORY_DATABASE_URL": db_url_for("inventory_sales"), "REDIS_URL": REDIS_URL, "REPLICA_ID": "inv-1"},
        )
        order_url = await asyncio.to_thread(
            procs.start,
            "services.order.main:app",
            {
                "ORDER_DATABASE_URL": db_url_for("orders_sales"),
                "REDIS_URL": REDIS_URL,
                "REPLICA_ID": "order-1",
                "ORDER_PAYSIM_PRIMARY_URL": paysim.primary,
                "ORDER_PAYSIM_BACKUP_URL": paysim.backup,
                "ORDER_PAYMENT_DEADLINE_SECONDS": str(DEADLINE_SECONDS),
                "ORDER_SWEEPER_INTERVAL_SECONDS": "0.2",
                "ORDER_STREAM_DISCOVERY_SECONDS": "0.2",
            },
        )
        settings = FlashSaleSettings(
            env="test",
            database_url=db_url_for("flashsale_sales"),
            redis_url=REDIS_URL,
            replica_id="fs-sales",
            inventory_url=inventory_url,
            order_url=order_url,
            allocation_sync_seconds=0.2,
            reconcile_interval_seconds=3600,
            catalog_refresh_seconds=0.2,
            scheduler_interval_seconds=0.1,
        )
        app = create_app(settings)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://flashsale") as fs,
            httpx.AsyncClient(base_url=inventory_url, headers=admin_headers()) as inv,
            httpx.AsyncClient(base_url=order_url) as orders,
        ):
            yield Stack(fs, inv, orders, redis, app.state.reconciler)
    finally:
        await asyncio.to_thread(procs.stop_all)
        await redis.aclose()


async def _sku(stack: Stack, sku: str, on_hand: int) -> None:
    resp = await stack.inventory.post("/admin/skus", json={"sku": sku, "name": sku, "initial_stock": on_hand})
    assert resp.status_code == 201, resp.text


async def _counters(stack: Stack, sku: str) -> dict[str, Any]:
    resp = await stack.inventory.get(f"/admin/skus/{sku}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _allocation(stack: Stack, sale_id: int, sku: str) -> dict[str, Any]:
    resp = await stack.inventory.get(f"/admin/allocations/{sale_id}/{sku}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _sale(stack: Stack, sku: str, quantity: int, **overrides: Any) -> httpx.Response:
    body = sale_body(sku=sku, quantity=quantity, **overrides)
    return await stack.flashsale.post("/admin/sales", json=body, headers=admin_headers())


async def _buy(stack: Stack, sale_id: int, user: str, qty: int = 1, key: str | None = None) -> httpx.Response:
    return await stack.flashsale.post(
        f"/sales/{sale_id}/purchase",
        json={"quantity": qty},
        headers=customer_headers(user, key or f"{user}-{sale_id}-{qty}"),
    )


async def _order(stack: Stack, user: str, rid: str) -> dict[str, Any]:
    resp = await stack.orders.get(f"/orders/by-reservation/{rid}", params={"wait": 10}, headers=customer_headers(user))
    assert resp.status_code == 200, resp.text
    order: dict[str, Any] = resp.json()
    return order


async def _reconciliation(stack: Stack, sale_id: int) -> dict[str, Any]:
    resp = await stack.flashsale.get(f"/admin/sales/{sale_id}/reconciliation", headers=admin_headers())
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_a_sale_allocates_sells_and_returns_warehouse_stock(stack: Stack) -> None:
    await _sku(stack, "WH-ROUND", 100)

    too_many = await _sale(stack, "WH-ROUND", 101)
    assert too_many.status_code == 409, too_many.text
    assert too_many.json()["code"] == "INSUFFICIENT_STOCK"
    assert too_many.headers["content-type"].startswith("application/problem+json")
    unknown = await _sale(stack, "WH-NOWHERE", 5)
    assert unknown.status_code == 409 and unknown.json()["code"] == "SKU_NOT_FOUND"
    listed = await stack.flashsale.get("/admin/sales", headers=admin_headers())
    assert [s for s in listed.json() if s["sku"] in ("WH-ROUND", "WH-NOWHERE")] == []  # nothing half-created

    created = await _sale(stack, "WH-ROUND", 30, per_user_limit=1)
    assert created.status_code == 201, created.text
    sale_id = created.json()["id"]
    assert (await _counters(stack, "WH-ROUND"))["available"] == 70
    assert (await _allocation(stack, sale_id, "WH-ROUND"))["allocated"] == 30

    more = await stack.flashsale.post(f"/admin/sales/{sale_id}/stock", json={"units": 10}, headers=admin_headers())
    assert more.status_code == 200 and more.json()["quantity"] == 40
    refused = await stack.flashsale.post(f"/admin/sales/{sale_id}/stock", json={"units": 61}, headers=admin_headers())
    assert refused.status_code == 409 and refused.json()["code"] == "INSUFFICIENT_STOCK"
    assert (await stack.flashsale.get(f"/admin/sales/{sale_id}", headers=admin_headers())).json()["quantity"] == 40
    assert (await _counters(stack, "WH-ROUND"))["available"] == 60

    assert (await stack.flashsale.post(f"/admin/sales/{sale_id}/start", headers=admin_headers())).status_code == 200
    rids = {}
    for n in range(10):
        resp = await _buy(stack, sale_id, f"wh-buyer-{n}")
        assert resp.status_code == 202, resp.text
        rids[f"wh-buyer-{n}"] = resp.json()["reservation_id"]
    # Six pay, four let their orders expire (their units go back to the sale).
    for n in range(6):
        user = f"wh-buyer-{n}"
        order = await _order(stack, user, rids[user])
        paid = await stack.orders.post(f"/orders/{order['id']}/pay", headers=customer_headers(user, f"pay-{user}"))
        assert paid.status_code == 200, paid.text
        assert paid.json()["state"] == "paid"

    async def four_released() -> bool:
        rec = await _reconciliation(stack, sale_id)
        return bool(rec["orders"]["released"] == 4 and rec["redis"]["sold"] == 6 and rec["redis"]["reserved"] == 0)

    await wait_for(four_released, timeout=DEADLINE_SECONDS + 10)
    live = await _reconciliation(stack, sale_id)
    assert live["balanced"] is True, live
    assert (live["quantity"], live["remaining"], live["paid"], live["reserved_unpaid"]) == (40, 34, 6, 0)

    # Paid units are sold in the warehouse while the sale still runs.
    async def sold_in_warehouse() -> bool:
        return bool((await _allocation(stack, sale_id, "WH-ROUND"))["sold"] == 6)

    await wait_for(sold_in_warehouse, timeout=30)
    stopped = await stack.flashsale.post(f"/admin/sales/{sale_id}/stop", headers=admin_headers())
    assert stopped.status_code == 200

    async def settled() -> dict[str, Any] | None:
        sale = (await stack.flashsale.get(f"/admin/sales/{sale_id}", headers=admin_headers())).json()
        return sale if sale["settled_at"] else None

    sale = await wait_for(settled, timeout=30)
    assert sale["returned_units"] == 34
    allocation = await _allocation(stack, sale_id, "WH-ROUND")
    assert (allocation["allocated"], allocation["sold"], allocation["returned"], allocation["outstanding"]) == (
        40,
        6,
        34,
        0,
    )
    counters = await _counters(stack, "WH-ROUND")
    assert (counters["on_hand"], counters["available"], counters["allocated"], counters["sold"]) == (100, 94, 0, 6)
    report = (await stack.inventory.get("/admin/reconciliation")).json()
    assert report["ok"] is True, report
    final = await _reconciliation(stack, sale_id)
    assert final["balanced"] is True and final["returned"] == 34 and final["remaining"] == 0, final


async def test_redis_flushed_mid_sale_is_rebuilt_from_the_record_and_nothing_is_oversold(stack: Stack) -> None:
    await _sku(stack, "WH-CRASH", 500)
    created = await _sale(stack, "WH-CRASH", 60, per_user_limit=2)
    assert created.status_code == 201, created.text
    sale_id = created.json()["id"]
    assert (await stack.flashsale.post(f"/admin/sales/{sale_id}/start", headers=admin_headers())).status_code == 200

    # 20 buyers take 30 units (ten of them 2, the limit); five pay.
    bought: dict[str, str] = {}
    for n in range(20):
        user = f"crash-buyer-{n}"
        resp = await _buy(stack, sale_id, user, qty=2 if n < 10 else 1)
        assert resp.status_code == 202, resp.text
        bought[user] = resp.json()["reservation_id"]
    for n in range(5):
        user = f"crash-buyer-{n}"
        order = await _order(stack, user, bought[user])
        paid = await stack.orders.post(f"/orders/{order['id']}/pay", headers=customer_headers(user, f"pay-{user}"))
        assert paid.status_code == 200 and paid.json()["state"] == "paid", paid.text
    for user, rid in bought.items():
        await _order(stack, user, rid)  # every accepted purchase has its order before the crash

    async def paid_confirmed() -> bool:
        return bool((await _reconciliation(stack, sale_id))["redis"]["sold"] == 10)

    await wait_for(paid_confirmed)

    # Redis crashes and comes back empty.
    await stack.redis.flushdb()
    refused = await _buy(stack, sale_id, "crash-newcomer")
    assert refused.status_code == 503, refused.text  # fail closed: no stock decision without the counters
    lost = await _reconciliation(stack, sale_id)
    assert lost["redis"] is None and lost["balanced"] is False
    assert any("Redis holds no data" in p for p in lost["problems"])

    repaired = await stack.flashsale.post(
        f"/admin/sales/{sale_id}/reconciliation/repair", headers=admin_headers("ops-repair")
    )
    assert repaired.status_code == 200, repaired.text
    body = repaired.json()
    assert body["repaired"]["remaining"] == 30 and body["repaired"]["sold"] == 10 and body["repaired"]["reserved"] == 20
    assert body["balanced"] is True, body
    stats = (await stack.flashsale.get(f"/admin/sales/{sale_id}/stats", headers=admin_headers())).json()
    assert (stats["remaining"], stats["reserved"], stats["sold"], stats["state"]) == (30, 20, 10, "live")
    audit = (await stack.flashsale.get("/admin/audit", params={"sale_id": sale_id}, headers=admin_headers())).json()
    assert any(e["action"] == "reconcile_repair" and e["actor"] == "ops-repair" for e in audit)

    # Per-user counts came back too: a buyer who had 2 is still at the limit.
    at_limit = await _buy(stack, sale_id, "crash-buyer-0", key="after-crash")
    assert at_limit.status_code == 403 and at_limit.json()["code"] == "PURCHASE_LIMIT_EXCEEDED"

    # A crowd buys the rest concurrently: exactly the 30 units left are sold, not one more.
    results = await asyncio.gather(*(_buy(stack, sale_id, f"crowd-{n}") for n in range(80)))
    accepted = [r for r in results if r.status_code == 202]
    assert len(accepted) == 30
    assert {r.json()["code"] for r in results if r.status_code != 202} == {"SOLD_OUT"}
    for n, r in enumerate(results):
        if r.status_code == 202:
            await _order(stack, f"crowd-{n}", r.json()["reservation_id"])

    rec = await _reconciliation(stack, sale_id)
    assert rec["balanced"] is True, rec
    assert rec["remaining"] == 0 and rec["orders"]["reserved"] + rec["orders"]["sold"] == 60
    assert rec["in_flight"] == 0


async def test_the_periodic_job_rebuilds_a_live_sale_whose_redis_data_is_gone(stack: Stack) -> None:
    await _sku(stack, "WH-AUTO", 50)
    created = await _sale(stack, "WH-AUTO", 20, per_user_limit=5)
    sale_id = created.json()["id"]
    assert (await stack.flashsale.post(f"/admin/sales/{sale_id}/start", headers=admin_headers())).status_code == 200
    for n in range(4):
        resp = await _buy(stack, sale_id, f"auto-{n}", qty=2)
        assert resp.status_code == 202
        await _order(stack, f"auto-{n}", resp.json()["reservation_id"])

    await stack.redis.flushdb()
    assert (await _buy(stack, sale_id, "auto-late")).status_code == 503
    await stack.reconciler.reconcile_periodically()  # the job's tick, as every replica runs it

    stats = (await stack.flashsale.get(f"/admin/sales/{sale_id}/stats", headers=admin_headers())).json()
    assert (stats["remaining"], stats["reserved"], stats["state"]) == (12, 8, "live")
    again = await _buy(stack, sale_id, "auto-late")
    assert again.status_code == 202, again.text
    audit = (await stack.flashsale.get("/admin/audit", params={"sale_id": sale_id}, headers=admin_headers())).json()
    assert any(e["action"] == "reconcile_repair" and e["actor"] == "system" for e in audit)


async def test_settlement_counts_what_the_record_says_was_paid_when_redis_forgot_a_reservation(stack: Stack) -> None:
    """Redis lost a reservation whose order exists (a crash losing its last second); the buyer still pays.
    Redis then shows nothing reserved and 2 sold; the warehouse must still get 3 sold, 7 returned."""
    await _sku(stack, "WH-FORGOT", 20)
    sale_id = (await _sale(stack, "WH-FORGOT", 10, per_user_limit=1)).json()["id"]
    assert (await stack.flashsale.post(f"/admin/sales/{sale_id}/start", headers=admin_headers())).status_code == 200
    orders = {}
    for n in range(3):
        resp = await _buy(stack, sale_id, f"forgot-{n}")
        assert resp.status_code == 202
        orders[f"forgot-{n}"] = (
            resp.json()["reservation_id"],
            await _order(stack, f"forgot-{n}", resp.json()["reservation_id"]),
        )
    rid, _ = orders["forgot-2"]
    # What Redis forgets with its last second: the reservation, and the counters it moved.
    await stack.redis.hdel(reservations_key(sale_id), rid)
    await stack.redis.hincrby(sale_key(sale_id), "reserved", -1)
    await stack.redis.hincrby(sale_key(sale_id), "remaining", 1)
    await stack.redis.hdel(bought_key(sale_id), "forgot-2")
    for user, (_rid, order) in orders.items():
        paid = await stack.orders.post(f"/orders/{order['id']}/pay", headers=customer_headers(user, f"pay-{user}"))
        assert paid.status_code == 200 and paid.json()["state"] == "paid", paid.text

    async def two_confirmed() -> bool:
        return bool((await _reconciliation(stack, sale_id))["redis"]["sold"] == 2)

    await wait_for(two_confirmed)  # the third confirmation finds nothing in Redis
    assert (await stack.flashsale.post(f"/admin/sales/{sale_id}/stop", headers=admin_headers())).status_code == 200

    async def settled() -> dict[str, Any] | None:
        sale = (await stack.flashsale.get(f"/admin/sales/{sale_id}", headers=admin_headers())).json()
        return sale if sale["settled_at"] else None

    sale = await wait_for(settled, timeout=30)
    assert sale["returned_units"] == 7
    allocation = await _allocation(stack, sale_id, "WH-FORGOT")
    assert (allocation["sold"], allocation["returned"], allocation["outstanding"]) == (3, 7, 0)
    counters = await _counters(stack, "WH-FORGOT")
    assert (counters["available"], counters["sold"], counters["allocated"]) == (17, 3, 0)


async def test_reconciliation_needs_admin_and_a_known_sale(stack: Stack) -> None:
    customer = await stack.flashsale.get("/admin/sales/1/reconciliation", headers=customer_headers("nosy"))
    assert customer.status_code == 403
    missing = await stack.flashsale.post("/admin/sales/999999/reconciliation/repair", headers=admin_headers())
    assert missing.status_code == 404 and missing.json()["code"] == "SALE_NOT_FOUND"


async def test_a_sale_whose_creation_fails_after_allocating_gives_the_stock_back(stack: Stack) -> None:
    await _sku(stack, "SKU-UNBORN", 50)
    # The sale's audit entry is refused by the database for one admin: the creation fails after the
    # warehouse has already allocated its units, inside the same transaction.
    dsn = db_url_for("flashsale_sales").replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            CREATE OR REPLACE FUNCTION refuse_doomed() RETURNS trigger AS $$
            BEGIN
              IF NEW.actor = 'ops-doomed' THEN RAISE EXCEPTION 'audit store refused'; END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER refuse_doomed BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION refuse_doomed();
            """
        )
        body = sale_body(sku="SKU-UNBORN", quantity=30)
        failed = await stack.flashsale.post("/admin/sales", json=body, headers=admin_headers("ops-doomed"))
        assert failed.status_code == 500
        assert failed.headers["content-type"] == "application/problem+json"
        # No sale exists, and none of the SKU's units are held for it.
        listed = await stack.flashsale.get("/admin/sales", headers=admin_headers())
        assert all(s["sku"] != "SKU-UNBORN" for s in listed.json())
        counters = await _counters(stack, "SKU-UNBORN")
        assert (counters["available"], counters["allocated"]) == (50, 0)

        # The same sale by another admin is created and takes its 30 units.
        created = await _sale(stack, "SKU-UNBORN", 30)
        assert created.status_code == 201, created.text
        counters = await _counters(stack, "SKU-UNBORN")
        assert (counters["available"], counters["allocated"]) == (20, 30)
    finally:
        await conn.execute("DROP TRIGGER IF EXISTS refuse_doomed ON audit_log")
        await conn.close()


async def test_stock_held_for_a_sale_id_with_no_sale_goes_back_after_the_grace_period(stack: Stack) -> None:
    await _sku(stack, "SKU-ORPHAN", 40)
    # What a flashsale process that died between the allocation and its commit leaves behind.
    orphan = await stack.inventory.put("/admin/allocations/880001/SKU-ORPHAN", json={"allocated": 25})
    assert orphan.status_code == 200, orphan.text
    real = await _sale(stack, "SKU-ORPHAN", 10)
    assert real.status_code == 201, real.text
    listed = {(a["sale_id"], a["outstanding"]) for a in (await stack.inventory.get("/admin/allocations")).json()}
    assert {(880001, 25), (real.json()["id"], 10)} <= listed
    assert (await _counters(stack, "SKU-ORPHAN"))["available"] == 5

    settings = stack.reconciler.settings
    grace = settings.orphan_allocation_grace_seconds
    try:
        # Seen for the first time: it might be a creation still in flight, so it is left alone.
        assert await stack.reconciler.release_orphan_allocations() == 0
        assert (await _allocation(stack, 880001, "SKU-ORPHAN"))["outstanding"] == 25
        settings.orphan_allocation_grace_seconds = 0
        assert await stack.reconciler.release_orphan_allocations() == 1
    finally:
        settings.orphan_allocation_grace_seconds = grace
    assert (await _allocation(stack, 880001, "SKU-ORPHAN"))["outstanding"] == 0
    assert (await _allocation(stack, real.json()["id"], "SKU-ORPHAN"))["outstanding"] == 10  # the real sale keeps its
    counters = await _counters(stack, "SKU-ORPHAN")
    assert (counters["available"], counters["allocated"]) == (30, 10)
    assert await stack.reconciler.release_orphan_allocations() == 0  # nothing left to give back

"""The inventory service over HTTP with real Redis and PostgreSQL: holds under a crowd, allocations, expiry,
low-stock alerts, reconciliation and refusals."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from services.common.contracts import ALERTS_STREAM, decode_event
from services.common.migrate import upgrade
from services.inventory.config import InventorySettings
from services.inventory.main import create_app
from services.inventory.store import stock_key
from tests.conftest import (
    TEST_REDIS_URL,
    admin_headers,
    customer_headers,
    db_name_for,
    db_url_for,
    drop_database,
    wait_for,
)

INVENTORY_DB_URL = db_url_for("inventory")


@pytest.fixture(scope="module")
async def inventory(redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    """The inventory service in-process, with 1 s holds allowed and a fast sweeper."""
    await drop_database(db_name_for("inventory"))
    await asyncio.to_thread(upgrade, "inventory", INVENTORY_DB_URL)
    settings = InventorySettings(
        env="test",
        database_url=INVENTORY_DB_URL,
        redis_url=TEST_REDIS_URL,
        replica_id="inv-test",
        min_hold_seconds=1,
        sweep_interval_seconds=0.1,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://inventory") as client:
            yield client


def _code() -> str:
    return f"SKU-{os.urandom(4).hex()}"


async def _sku(inventory: httpx.AsyncClient, stock: int, **fields: Any) -> str:
    code = _code()
    body = {"sku": code, "name": "Test phone", "initial_stock": stock, **fields}
    resp = await inventory.post("/admin/skus", json=body, headers=admin_headers())
    assert resp.status_code == 201, resp.text
    return code


async def _counters(inventory: httpx.AsyncClient, sku: str) -> dict[str, Any]:
    resp = await inventory.get(f"/admin/skus/{sku}", headers=admin_headers())
    assert resp.status_code == 200, resp.text
    detail: dict[str, Any] = resp.json()
    return detail


async def _hold(inventory: httpx.AsyncClient, sku: str, user: str, key: str, quantity: int = 1, ttl: int = 600) -> Any:
    body = {"sku": sku, "quantity": quantity, "ttl_seconds": ttl}
    return await inventory.post("/holds", json=body, headers=customer_headers(user, key))


async def _reconciled(inventory: httpx.AsyncClient, sku: str) -> dict[str, Any]:
    resp = await inventory.get("/admin/reconciliation", headers=admin_headers())
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["ok"], report["drift"]
    entry: dict[str, Any] = next(s for s in report["skus"] if s["sku"] == sku)
    assert entry["counters"] == entry["from_ledger"]
    return entry


def _balanced(c: dict[str, Any]) -> bool:
    return bool(c["on_hand"] == c["available"] + c["allocated"] + c["held"] + c["sold"])


async def test_200_concurrent_holds_on_50_units_never_exceed_stock(inventory: httpx.AsyncClient) -> None:
    sku = await _sku(inventory, 50)
    results = await asyncio.gather(*(_hold(inventory, sku, f"crowd-{n}", f"k-{n}") for n in range(200)))
    statuses = Counter(r.status_code for r in results)
    assert statuses == {201: 50, 409: 150}, statuses
    assert {r.json()["code"] for r in results if r.status_code == 409} == {"INSUFFICIENT_STOCK"}
    assert len({r.json()["hold_id"] for r in results if r.status_code == 201}) == 50
    c = await _counters(inventory, sku)
    assert (c["available"], c["held"], c["on_hand"]) == (0, 50, 50)
    await _reconciled(inventory, sku)
    availability = await inventory.get(f"/skus/{sku}/availability")
    assert availability.json() == {"sku": sku, "available": 0}


async def test_reconciliation_during_a_burst_of_holds_never_reports_drift_that_is_not_there(
    inventory: httpx.AsyncClient,
) -> None:
    sku = await _sku(inventory, 300)
    burst = asyncio.ensure_future(asyncio.gather(*(_hold(inventory, sku, f"burst-{n}", f"k-{n}") for n in range(300))))
    reports = []
    while not burst.done():
        resp = await inventory.get("/admin/reconciliation", headers=admin_headers())
        assert resp.status_code == 200, resp.text
        reports.append(resp.json())
    assert Counter(r.status_code for r in await burst) == {201: 300}
    assert len(reports) >= 3  # it did reconcile while the holds were being taken
    assert [r["drift"] for r in reports if not r["ok"]] == []
    await _reconciled(inventory, sku)


async def test_hold_replay_confirm_and_release(inventory: httpx.AsyncClient) -> None:
    sku = await _sku(inventory, 10)
    first = await _hold(inventory, sku, "shopper-1", "same", quantity=3)
    again = await _hold(inventory, sku, "shopper-1", "same", quantity=3)
    assert first.status_code == again.status_code == 201
    assert first.json()["hold_id"] == again.json()["hold_id"]
    other = await _hold(inventory, sku, "shopper-1", "same", quantity=4)
    assert other.status_code == 422
    assert other.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    hold_id = first.json()["hold_id"]
    stranger = await inventory.post(f"/holds/{hold_id}/confirm", headers=customer_headers("shopper-2"))
    assert stranger.status_code == 404
    confirmed = await inventory.post(f"/holds/{hold_id}/confirm", headers=customer_headers("shopper-1"))
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["state"] == "confirmed"
    release_confirmed = await inventory.post(f"/holds/{hold_id}/release", headers=customer_headers("shopper-1"))
    assert release_confirmed.status_code == 409
    assert release_confirmed.json()["code"] == "HOLD_NOT_ACTIVE"
    second = (await _hold(inventory, sku, "shopper-1", "second", quantity=2)).json()["hold_id"]
    released = await inventory.post(f"/holds/{second}/release", headers=customer_headers("shopper-1"))
    assert released.json()["state"] == "released"
    c = await _counters(inventory, sku)
    assert (c["available"], c["held"], c["sold"]) == (7, 0, 3)
    assert [e["kind"] for e in c["ledger"]] == ["release", "hold", "confirm", "hold", "restock"]
    await _reconciled(inventory, sku)


async def test_allocation_return_sell_round_trip_reconciles(inventory: httpx.AsyncClient) -> None:
    sku = await _sku(inventory, 100)
    h = admin_headers()
    resp = await inventory.post("/admin/allocations", json={"sale_id": 7, "sku": sku, "quantity": 60}, headers=h)
    assert resp.status_code == 201, resp.text
    resp = await inventory.post(f"/admin/allocations/7/{sku}/sell", json={"quantity": 45}, headers=h)
    assert resp.status_code == 200, resp.text
    resp = await inventory.post(f"/admin/allocations/7/{sku}/return", json={"quantity": 15}, headers=h)
    assert resp.json() == {"sale_id": 7, "sku": sku, "allocated": 60, "returned": 15, "sold": 45, "outstanding": 0}
    too_many = await inventory.post(f"/admin/allocations/7/{sku}/return", json={"quantity": 1}, headers=h)
    assert too_many.status_code == 409
    assert too_many.json()["code"] == "ALLOCATION_EXCEEDED"
    unknown = await inventory.post(f"/admin/allocations/8/{sku}/sell", json={"quantity": 1}, headers=h)
    assert unknown.status_code == 404
    await _hold(inventory, sku, "buyer", "rt-1", quantity=5)
    restock = await inventory.post(f"/admin/skus/{sku}/restock", json={"quantity": 20, "reason": "truck"}, headers=h)
    assert restock.status_code == 200, restock.text
    adjust = await inventory.post(f"/admin/skus/{sku}/adjust", json={"delta": -3, "reason": "broken"}, headers=h)
    assert adjust.status_code == 200, adjust.text
    c = await _counters(inventory, sku)
    assert (c["on_hand"], c["available"], c["allocated"], c["held"], c["sold"]) == (117, 67, 0, 5, 45)
    assert _balanced(c)
    entry = await _reconciled(inventory, sku)
    assert entry["last_ledger_available"] == entry["mirror_available"] == 67
    ledger = (await inventory.get(f"/admin/skus/{sku}/ledger?limit=2", headers=h)).json()
    assert [(e["kind"], e["quantity"], e["available_after"]) for e in ledger] == [
        ("adjust", -3, 67),
        ("restock", 20, 70),
    ]


async def test_allocating_more_than_available_is_refused_and_changes_nothing(inventory: httpx.AsyncClient) -> None:
    sku = await _sku(inventory, 10)
    h = admin_headers()
    before = await _counters(inventory, sku)
    resp = await inventory.post("/admin/allocations", json={"sale_id": 9, "sku": sku, "quantity": 11}, headers=h)
    assert resp.status_code == 409
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == "INSUFFICIENT_STOCK"
    below_zero = await inventory.post(f"/admin/skus/{sku}/adjust", json={"delta": -11, "reason": "x"}, headers=h)
    assert below_zero.json()["code"] == "INSUFFICIENT_STOCK"
    assert await _counters(inventory, sku) == before
    nothing = await inventory.post(f"/admin/allocations/9/{sku}/sell", json={"quantity": 1}, headers=h)
    assert nothing.json()["code"] == "ALLOCATION_NOT_FOUND"
    await _reconciled(inventory, sku)


async def test_allocation_totals_move_stock_once_and_refuse_what_cannot_be(inventory: httpx.AsyncClient) -> None:
    sku = await _sku(inventory, 100)
    h = admin_headers()
    path = f"/admin/allocations/77/{sku}"
    for _ in range(3):  # the same totals, sent again and again (retries, two replicas): applied once
        first = await inventory.put(path, json={"allocated": 40}, headers=h)
        assert first.status_code == 200 and first.json()["allocated"] == 40
    assert (await _counters(inventory, sku))["available"] == 60
    settled = await inventory.put(path, json={"allocated": 40, "sold": 15, "returned": 5}, headers=h)
    assert settled.json() == {
        "sale_id": 77,
        "sku": sku,
        "allocated": 40,
        "sold": 15,
        "returned": 5,
        "outstanding": 20,
    }
    older = await inventory.put(path, json={"allocated": 40, "sold": 10}, headers=h)  # a late, older report
    assert (older.json()["sold"], older.json()["returned"]) == (15, 5)  # never moves backwards
    before = await _counters(inventory, sku)
    assert (before["available"], before["allocated"], before["sold"]) == (65, 20, 15)

    too_many = await inventory.put(path, json={"allocated": 200}, headers=h)
    assert too_many.status_code == 409 and too_many.json()["code"] == "INSUFFICIENT_STOCK"
    below_settled = await inventory.put(path, json={"allocated": 19}, headers=h)
    assert below_settled.status_code == 409 and below_settled.json()["code"] == "ALLOCATION_EXCEEDED"
    for bad in ({"allocated": -1}, {"allocated": "40"}, {"allocated": 40, "sold": -2}, {"sold": 3}, {}):
        resp = await inventory.put(path, json=bad, headers=h)
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
    unknown = await inventory.put("/admin/allocations/77/NO-SUCH-SKU", json={"allocated": 1}, headers=h)
    assert unknown.status_code == 404 and unknown.json()["code"] == "SKU_NOT_FOUND"
    customer = await inventory.put(path, json={"allocated": 1}, headers=customer_headers("nosy"))
    assert customer.status_code == 403
    assert await _counters(inventory, sku) == before
    await _reconciled(inventory, sku)


async def test_expired_hold_returns_its_units_by_itself(inventory: httpx.AsyncClient) -> None:
    sku = await _sku(inventory, 5)
    hold = await _hold(inventory, sku, "slow-buyer", "slow", quantity=4, ttl=1)
    assert hold.status_code == 201, hold.text
    assert (await _counters(inventory, sku))["available"] == 1

    async def returned() -> bool:
        c = await _counters(inventory, sku)
        return bool(c["available"] == 5 and c["held"] == 0)

    await wait_for(returned)
    late = await inventory.post(f"/holds/{hold.json()['hold_id']}/confirm", headers=customer_headers("slow-buyer"))
    assert late.status_code == 409
    assert late.json()["code"] == "HOLD_EXPIRED"
    c = await _counters(inventory, sku)
    assert (c["ledger"][0]["kind"], c["ledger"][0]["reason"], c["sold"]) == ("release", "expired", 0)
    await _reconciled(inventory, sku)


async def test_one_low_stock_alert_per_crossing_rearmed_by_restock(inventory: httpx.AsyncClient, redis: Redis) -> None:
    sku = await _sku(inventory, 10, low_stock_threshold=5)

    async def alerts() -> list[dict[str, Any]]:
        entries = await redis.xrange(ALERTS_STREAM)
        events = [decode_event(fields) for _id, fields in entries]
        return [e for e in events if e["type"] == "stock.low" and e.get("sku") == sku]

    await _hold(inventory, sku, "a", "a1", quantity=5)
    await _hold(inventory, sku, "a", "a2", quantity=1)
    await _hold(inventory, sku, "a", "a3", quantity=1)
    first = await alerts()
    assert len(first) == 1
    assert (first[0]["available"], first[0]["threshold"], first[0]["v"]) == (5, 5, 1)
    assert first[0]["replenish"] == 5
    restock = await inventory.post(
        f"/admin/skus/{sku}/restock", json={"quantity": 10, "reason": "truck"}, headers=admin_headers()
    )
    assert restock.json()["alert_armed"] is True
    assert len(await alerts()) == 1
    await _hold(inventory, sku, "a", "a4", quantity=8)  # 13 -> 5
    await _hold(inventory, sku, "a", "a5", quantity=2)
    assert [a["available"] for a in await alerts()] == [5, 5]
    percent = await inventory.put(
        f"/admin/skus/{sku}/threshold", json={"value": 50, "kind": "percent"}, headers=admin_headers()
    )
    assert percent.status_code == 200, percent.text
    assert percent.json()["alert_armed"] is False  # 3 available of 20 on hand, already below 50 %
    bad = await inventory.put(
        f"/admin/skus/{sku}/threshold", json={"value": 150, "kind": "percent"}, headers=admin_headers()
    )
    assert bad.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"quantity": -1, "ttl_seconds": 60},
        {"quantity": 0, "ttl_seconds": 60},
        {"quantity": 1.5, "ttl_seconds": 60},
        {"quantity": "2", "ttl_seconds": 60},
        {"quantity": 1, "ttl_seconds": 0},
        {"quantity": 1, "ttl_seconds": 3601},
        {"quantity": 1, "ttl_seconds": 60, "extra": True},
        {"quantity": 1},
        {"quantity": 11, "ttl_seconds": 60},
    ],
)
async def test_bad_hold_requests_are_refused_and_change_nothing(
    inventory: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    sku = await _sku(inventory, 10)
    before = await _counters(inventory, sku)
    resp = await inventory.post(
        "/holds", json={"sku": sku, **body}, headers=customer_headers("bad", os.urandom(4).hex())
    )
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert await _counters(inventory, sku) == before


async def test_malformed_input_unknown_sku_and_missing_key(inventory: httpx.AsyncClient) -> None:
    sku = await _sku(inventory, 10)
    h = admin_headers()
    before = await _counters(inventory, sku)
    cases = [
        (f"/admin/skus/{sku}/restock", b'{"quantity": 5, "reason":', h, 400, "MALFORMED_JSON"),
        (f"/admin/skus/{sku}/restock", b'{"quantity": 0, "reason": "x"}', h, 422, "VALIDATION_ERROR"),
        (f"/admin/skus/{sku}/restock", b'{"quantity": 2.0, "reason": "x"}', h, 422, "VALIDATION_ERROR"),
        (f"/admin/skus/{sku}/adjust", b'{"delta": 0, "reason": "x"}', h, 422, "VALIDATION_ERROR"),
        ("/admin/skus/NOPE-404/restock", b'{"quantity": 5, "reason": "x"}', h, 404, "SKU_NOT_FOUND"),
        ("/admin/allocations", b'{"sale_id": 1, "sku": "NOPE-404", "quantity": 1}', h, 404, "SKU_NOT_FOUND"),
        (
            "/holds",
            f'{{"sku": "{sku}", "quantity": 1, "ttl_seconds": 60}}'.encode(),
            customer_headers("u"),
            400,
            "IDEMPOTENCY_KEY_REQUIRED",
        ),
        (
            "/holds",
            b'{"sku": "NOPE-404", "quantity": 1, "ttl_seconds": 60}',
            customer_headers("u", "k"),
            404,
            "SKU_NOT_FOUND",
        ),
    ]
    for path, content, headers, status, code in cases:
        resp = await inventory.post(path, content=content, headers={**headers, "content-type": "application/json"})
        assert (resp.status_code, resp.json()["code"]) == (status, code), (path, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
    assert await _counters(inventory, sku) == before
    duplicate = await inventory.post("/admin/skus", json={"sku": sku, "name": "again"}, headers=h)
    assert duplicate.json()["code"] == "SKU_EXISTS"


async def test_admin_routes_need_the_admin_role(inventory: httpx.AsyncClient) -> None:
    sku = await _sku(inventory, 10)
    routes = [
        ("POST", "/admin/skus", {"sku": _code(), "name": "x", "initial_stock": 1}),
        ("POST", f"/admin/skus/{sku}/restock", {"quantity": 1, "reason": "x"}),
        ("POST", f"/admin/skus/{sku}/adjust", {"delta": 1, "reason": "x"}),
        ("PUT", f"/admin/skus/{sku}/threshold", {"value": 1, "kind": "absolute"}),
        ("POST", "/admin/allocations", {"sale_id": 1, "sku": sku, "quantity": 1}),
        ("POST", f"/admin/allocations/1/{sku}/return", {"quantity": 1}),
        ("POST", f"/admin/allocations/1/{sku}/sell", {"quantity": 1}),
        ("GET", f"/admin/skus/{sku}", None),
        ("GET", f"/admin/skus/{sku}/ledger", None),
        ("GET", "/admin/reconciliation", None),
    ]
    for method, path, body in routes:
        anonymous = await inventory.request(method, path, json=body)
        customer = await inventory.request(method, path, json=body, headers=customer_headers("nosy"))
        assert (anonymous.status_code, customer.status_code) == (401, 403), path
        assert customer.json()["code"] == "FORBIDDEN"
    assert (await _counters(inventory, sku))["on_hand"] == 10


async def test_admin_change_with_idempotency_key_applies_once(inventory: httpx.AsyncClient) -> None:
    sku = await _sku(inventory, 10)
    headers = {**admin_headers(), "Idempotency-Key": "truck-42"}
    body = {"quantity": 5, "reason": "truck 42"}
    first = await inventory.post(f"/admin/skus/{sku}/restock", json=body, headers=headers)
    again = await inventory.post(f"/admin/skus/{sku}/restock", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert (await _counters(inventory, sku))["on_hand"] == 15


async def test_redis_copy_lost_is_reported_and_rebuilt_from_postgres(
    inventory: httpx.AsyncClient, redis: Redis
) -> None:
    sku = await _sku(inventory, 40)
    assert (await _hold(inventory, sku, "mirror-user", "m-1", quantity=5)).status_code == 201
    assert (await inventory.get(f"/skus/{sku}/availability")).json()["available"] == 35
    await redis.delete(stock_key(sku))  # what a Redis crash that lost data leaves behind
    report = (await inventory.get("/admin/reconciliation", headers=admin_headers())).json()
    assert report["ok"]  # PostgreSQL, the truth, still adds up
    assert any(line.startswith(f"{sku}:") for line in report["mirror_drift"])
    repaired = await inventory.post("/admin/reconciliation/repair", headers=admin_headers())
    assert repaired.status_code == 200, repaired.text
    assert not [line for line in repaired.json()["mirror_drift"] if line.startswith(f"{sku}:")]
    assert await redis.hget(stock_key(sku), "available") == "35"
    assert (await inventory.post("/admin/reconciliation/repair", headers=customer_headers("x"))).status_code == 403

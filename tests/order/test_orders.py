"""From reservation to paid order: the order service with real Redis, PostgreSQL and paysim processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import select

from services.common.contracts import purchase_stream
from services.common.migrate import upgrade
from services.order.config import OrderSettings
from services.order.main import create_app
from services.order.models import Order, OutboxEvent
from tests.conftest import (
    TEST_REDIS_URL,
    PaySims,
    Processes,
    admin_headers,
    customer_headers,
    db_name_for,
    db_url_for,
    drop_database,
    live_sale,
    order_processes,
    sale_stats,
    wait_for,
)

ORDER_DB_URL = db_url_for("orders")
DEADLINE_SECONDS = 4


@pytest.fixture(scope="module")
def order_url(database: str) -> Iterator[str]:
    """A real order process on the test database, answering the admin API for the coupon service.

    It follows no purchase streams (an empty registry): the in-process replica creates the orders.
    """
    replica = {"REPLICA_ID": "order-admin-only", "ORDER_PURCHASE_STREAM_REGISTRY": "test:no-streams"}
    with order_processes("orders", replica) as (url,):
        yield url


@pytest.fixture(scope="module")
def coupon_url(order_url: str) -> Iterator[str]:
    """The coupon service as a real process (the order service prices orders through it over HTTP)."""
    url = db_url_for("coupons_order")
    asyncio.run(drop_database(db_name_for("coupons_order")))
    upgrade("coupon", url)
    procs = Processes()
    try:
        yield procs.start(
            "services.coupon.main:app",
            {
                "COUPON_DATABASE_URL": url,
                "REDIS_URL": TEST_REDIS_URL,
                "REPLICA_ID": "coupon-for-orders",
                "COUPON_ORDER_URL": order_url,
            },
        )
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
async def orders(redis: Redis, paysim: PaySims, app: FastAPI, coupon_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The order service in-process, beside the in-process flashsale app (which consumes order events)."""
    settings = OrderSettings(
        env="test",
        database_url=ORDER_DB_URL,
        redis_url=TEST_REDIS_URL,
        paysim_primary_url=paysim.primary,
        paysim_backup_url=paysim.backup,
        payment_deadline_seconds=DEADLINE_SECONDS,
        payment_timeout_seconds=1.0,
        breaker_reset_seconds=0.5,
        sweeper_interval_seconds=0.2,
        stream_discovery_seconds=0.2,
        replica_id="order-test",
        coupon_url=coupon_url,
        duplicate_check_after_seconds=0,
        duplicate_check_interval_seconds=0.3,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://order") as client:
            yield client


@pytest.fixture(autouse=True)
async def healthy_providers(paysim: PaySims) -> AsyncIterator[None]:
    await _faults(paysim, "primary", None)
    await _faults(paysim, "backup", None)
    yield
    await _faults(paysim, "primary", None)
    await _faults(paysim, "backup", None)


async def _faults(paysim: PaySims, name: str, faults: dict[str, Any] | None) -> None:
    async with httpx.AsyncClient(base_url=paysim.urls[name]) as c:
        if faults is None:
            resp = await c.delete("/admin/faults", headers=admin_headers())
        else:
            resp = await c.put("/admin/faults", json=faults, headers=admin_headers())
        assert resp.status_code == 200, resp.text


async def _buy(client: httpx.AsyncClient, sale_id: int, user: str, qty: int = 1) -> str:
    resp = await client.post(
        f"/sales/{sale_id}/purchase", json={"quantity": qty}, headers=customer_headers(user, f"{user}-{sale_id}")
    )
    assert resp.status_code == 202, resp.text
    rid: str = resp.json()["reservation_id"]
    return rid


async def _order_of(orders: httpx.AsyncClient, user: str, rid: str) -> dict[str, Any]:
    resp = await orders.get(f"/orders/by-reservation/{rid}", params={"wait": 10}, headers=customer_headers(user))
    assert resp.status_code == 200, resp.text
    order: dict[str, Any] = resp.json()
    return order


async def _pay(orders: httpx.AsyncClient, user: str, order_id: str, key: str = "pay-1") -> httpx.Response:
    return await orders.post(f"/orders/{order_id}/pay", headers=customer_headers(user, key))


async def test_purchase_becomes_an_order_and_payment_makes_it_paid(
    client: httpx.AsyncClient, orders: httpx.AsyncClient
) -> None:
    sale = await live_sale(client, quantity=5, per_user_limit=2, price=12_345, original_price=20_000)
    rid = await _buy(client, sale["id"], "buyer-1", qty=2)
    order = await _order_of(orders, "buyer-1", rid)
    assert order["state"] == "pending_payment"
    assert (order["subtotal"], order["discount"], order["total"]) == (24_690, 0, 24_690)
    assert order["lines"] == [
        {"sku": "SKU-TEST", "sale_id": sale["id"], "unit_price": 12_345, "quantity": 2, "amount": 24_690}
    ]

    paid = await _pay(orders, "buyer-1", order["id"])
    assert paid.status_code == 200, paid.text
    assert paid.json()["state"] == "paid"
    assert paid.json()["payment_provider"] == "primary"
    again = await _pay(orders, "buyer-1", order["id"])
    assert again.json() == paid.json()

    async def confirmed() -> bool:
        stats = await sale_stats(client, sale["id"])
        return bool((stats["sold"], stats["reserved"]) == (2, 0))

    await wait_for(confirmed)  # order.paid reached flashsale through the outbox and the stream
    detail = (await orders.get(f"/admin/orders/{order['id']}", headers=admin_headers())).json()
    assert [(a["provider"], a["outcome"]) for a in detail["attempts"]] == [("primary", "succeeded")]


async def test_unpaid_order_expires_and_its_units_come_back(
    client: httpx.AsyncClient, orders: httpx.AsyncClient
) -> None:
    sale = await live_sale(client, quantity=1, per_user_limit=1)
    rid = await _buy(client, sale["id"], "sleeper")
    order = await _order_of(orders, "sleeper", rid)
    assert (
        await client.post(
            f"/sales/{sale['id']}/purchase", json={"quantity": 1}, headers=customer_headers("other", "o-1")
        )
    ).json()["code"] == "SOLD_OUT"

    async def expired() -> bool:
        resp = await orders.get(f"/orders/{order['id']}", headers=customer_headers("sleeper"))
        return bool(resp.json()["state"] == "expired")

    await wait_for(expired, timeout=DEADLINE_SECONDS + 10)
    late = await _pay(orders, "sleeper", order["id"])
    assert late.status_code == 409
    assert late.json()["code"] == "INVALID_ORDER_STATE"

    async def restocked() -> bool:
        stats = await sale_stats(client, sale["id"])
        return bool((stats["remaining"], stats["reserved"], stats["released"]) == (1, 0, 1))

    await wait_for(restocked)
    # Buyable again, by the same user too (their count was restored).
    retry = await wait_for(lambda: _try_buy(client, sale["id"], "sleeper", "again"), timeout=5)
    assert retry.status_code == 202


async def _try_buy(client: httpx.AsyncClient, sale_id: int, user: str, key: str) -> httpx.Response | None:
    resp = await client.post(f"/sales/{sale_id}/purchase", json={"quantity": 1}, headers=customer_headers(user, key))
    return resp if resp.status_code == 202 else None


async def test_buyer_cancel_releases_the_reservation(client: httpx.AsyncClient, orders: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=3, per_user_limit=3)
    rid = await _buy(client, sale["id"], "canceller", qty=3)
    order = await _order_of(orders, "canceller", rid)
    resp = await orders.post(f"/orders/{order['id']}/cancel", headers=customer_headers("canceller", "c-1"))
    assert resp.status_code == 200
    assert resp.json()["state"] == "cancelled"
    pay = await _pay(orders, "canceller", order["id"])
    assert pay.status_code == 409

    async def released() -> bool:
        return bool((await sale_stats(client, sale["id"]))["remaining"] == 3)

    await wait_for(released)


async def test_one_user_cannot_read_pay_or_cancel_another_users_order(
    client: httpx.AsyncClient, orders: httpx.AsyncClient
) -> None:
    sale = await live_sale(client, quantity=2)
    rid = await _buy(client, sale["id"], "alice")
    order = await _order_of(orders, "alice", rid)
    mallory = customer_headers("mallory", "m-1")
    for resp in (
        await orders.get(f"/orders/{order['id']}", headers=mallory),
        await orders.get(f"/orders/by-reservation/{rid}", headers=mallory),
        await orders.post(f"/orders/{order['id']}/pay", headers=mallory),
        await orders.post(f"/orders/{order['id']}/cancel", headers=mallory),
    ):
        assert resp.status_code == 404
        assert resp.json()["code"] == "ORDER_NOT_FOUND"
    assert all(o["id"] != order["id"] for o in (await orders.get("/orders", headers=mallory)).json())
    assert (await orders.get(f"/orders/{order['id']}", headers=customer_headers("alice"))).json()["state"] == (
        "pending_payment"
    )
    assert (await orders.get("/admin/orders", headers=customer_headers("alice"))).status_code == 403
    assert (await orders.get(f"/orders/{order['id']}")).status_code == 401


async def test_primary_down_pays_through_the_backup(
    client: httpx.AsyncClient, orders: httpx.AsyncClient, paysim: PaySims
) -> None:
    await _faults(paysim, "primary", {"down": True})
    sale = await live_sale(client, quantity=2)
    rid = await _buy(client, sale["id"], "fo-1")
    order = await _order_of(orders, "fo-1", rid)
    paid = await _pay(orders, "fo-1", order["id"])
    assert paid.status_code == 200, paid.text
    assert paid.json()["payment_provider"] == "backup"
    detail = (await orders.get(f"/admin/orders/{order['id']}", headers=admin_headers())).json()
    outcomes = [(a["provider"], a["outcome"]) for a in detail["attempts"]]
    assert outcomes[:2] == [("primary", "error"), ("backup", "succeeded")]


async def test_both_providers_down_fails_cleanly_and_a_later_retry_succeeds(
    client: httpx.AsyncClient, orders: httpx.AsyncClient, paysim: PaySims
) -> None:
    await _faults(paysim, "primary", {"down": True})
    await _faults(paysim, "backup", {"down": True})
    sale = await live_sale(client, quantity=2)
    rid = await _buy(client, sale["id"], "fo-2")
    order = await _order_of(orders, "fo-2", rid)
    failed = await _pay(orders, "fo-2", order["id"], key="try-1")
    assert failed.status_code == 503
    assert failed.json()["code"] == "PAYMENT_UNAVAILABLE"
    still = await orders.get(f"/orders/{order['id']}", headers=customer_headers("fo-2"))
    assert still.json()["state"] == "pending_payment"

    await _faults(paysim, "primary", None)
    await _faults(paysim, "backup", None)
    await asyncio.sleep(0.6)  # the breaker's half-open probe is due
    paid = await _pay(orders, "fo-2", order["id"], key="try-2")
    assert paid.status_code == 200, paid.text
    assert paid.json()["state"] == "paid"


async def test_admin_stats_search_fulfil_and_refund(client: httpx.AsyncClient, orders: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=1, price=1_000, original_price=2_000)
    ids = []
    for n in range(3):
        rid = await _buy(client, sale["id"], f"st-{n}")
        ids.append((await _order_of(orders, f"st-{n}", rid))["id"])
    for n in range(2):
        assert (await _pay(orders, f"st-{n}", ids[n])).status_code == 200

    stats = (await orders.get("/admin/orders/stats", params={"sale_id": sale["id"]}, headers=admin_headers())).json()
    assert stats["orders"] == 3
    assert stats["paid"] == 2
    assert stats["gmv"] == 2_000
    assert stats["by_state"] == {"paid": 2, "pending_payment": 1}
    assert stats["payment_success_rate"] == 1.0
    assert stats["median_seconds_to_pay"] is not None

    found = (
        await orders.get(
            "/admin/orders", params={"sale_id": sale["id"], "state": "pending_payment"}, headers=admin_headers()
        )
    ).json()
    assert [o["id"] for o in found] == [ids[2]]

    fulfilled = await orders.post(f"/admin/orders/{ids[0]}/fulfil", headers=admin_headers())
    assert fulfilled.json()["state"] == "fulfilled"
    refunded = await orders.post(f"/admin/orders/{ids[1]}/refund", headers=admin_headers())
    assert refunded.json()["state"] == "refunded"
    bad = await orders.post(f"/admin/orders/{ids[0]}/refund", headers=admin_headers())
    assert bad.status_code == 409
    assert bad.json()["code"] == "INVALID_ORDER_STATE"
    cancelled = await orders.post(f"/admin/orders/{ids[2]}/cancel", headers=admin_headers())
    assert cancelled.json()["state"] == "cancelled"


async def test_ingest_lets_go_of_drained_streams_and_picks_them_up_again(
    client: httpx.AsyncClient, orders: httpx.AsyncClient
) -> None:
    ingest = orders._transport.app.state.ingest  # type: ignore[attr-defined]
    sale = await live_sale(client, quantity=5)
    stream = purchase_stream(sale["id"])
    rid = await _buy(client, sale["id"], "idle-1")
    await _order_of(orders, "idle-1", rid)
    ingest.follower.idle_seconds = 0.0
    try:

        async def let_go() -> bool:
            await ingest.sync()
            return stream not in ingest.followed  # drained: no connection held for it

        await wait_for(let_go)
        rid = await _buy(client, sale["id"], "idle-2")
        assert (await _order_of(orders, "idle-2", rid))["state"] == "pending_payment"  # new work is picked up
    finally:
        ingest.follower.idle_seconds = 60.0


async def test_purchase_naming_a_coupon_is_priced_with_it_and_payment_uses_it(
    client: httpx.AsyncClient, orders: httpx.AsyncClient, coupon_url: str
) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=2, price=20_000, original_price=30_000)
    async with httpx.AsyncClient(base_url=coupon_url) as coupons:
        template = await coupons.post(
            "/admin/templates",
            json={
                "name": "spend 300 save 50",
                "kind": "tiered",
                "tiers": [{"spend": 30_000, "off": 5_000}, {"spend": 50_000, "off": 10_000}],
                "scope": "sales",
                "scope_sales": [sale["id"]],
                "total_quantity": 10,
            },
            headers=admin_headers(),
        )
        assert template.status_code == 201, template.text
        claim = await coupons.post(
            f"/templates/{template.json()['id']}/claim", headers=customer_headers("couponer", "c-1")
        )
        coupon_id = claim.json()["coupon_id"]
        resp = await client.post(
            f"/sales/{sale['id']}/purchase",
            json={"quantity": 2, "coupon_ids": [coupon_id]},
            headers=customer_headers("couponer", "buy-1"),
        )
        assert resp.status_code == 202, resp.text
        rid = resp.json()["reservation_id"]

        async def priced() -> dict[str, Any] | None:
            order = await _order_of(orders, "couponer", rid)
            return order if order["pricing"] == "final" else None

        order = await wait_for(priced)
        assert (order["subtotal"], order["discount"], order["total"]) == (40_000, 5_000, 35_000), order["coupons"]
        assert [d["coupon_id"] for d in order["coupons"]["discounts"]] == [coupon_id]
        assert "spend" in order["coupons"]["discounts"][0]["reason"]
        paid = await _pay(orders, "couponer", order["id"])
        assert paid.status_code == 200, paid.text

        async def used() -> bool:
            wallet = (await coupons.get("/wallet", headers=customer_headers("couponer"))).json()
            return bool(wallet[0]["state"] == "used")

        await wait_for(used)

        # A replica that read the order while it was still unpriced finishes its pricing pass late: the order
        # is paid by then, so its coupons stay used and no release event is written for it.
        service = orders._transport.app.state.service  # type: ignore[attr-defined]
        async with service.sessions.begin() as session:
            current = await session.get(Order, order["id"])
            await service.pricing.release_coupons_of_closed(session, current)
        async with service.sessions() as session:
            released = await session.scalars(
                select(OutboxEvent).where(
                    OutboxEvent.event_type == "order.coupons_released",
                    OutboxEvent.payload["order_id"].astext == order["id"],
                )
            )
            assert list(released) == []
        wallet = (await coupons.get("/wallet", headers=customer_headers("couponer"))).json()
        assert wallet[0]["state"] == "used"


async def test_compensation_reaches_every_buyer_whose_order_a_system_failure_cancelled(
    client: httpx.AsyncClient, orders: httpx.AsyncClient, coupon_url: str
) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=1)
    ids = {}
    for user in ("hit-1", "hit-2", "spared", "hit-3"):
        rid = await _buy(client, sale["id"], user)
        ids[user] = (await _order_of(orders, user, rid))["id"]
    for user in ("hit-1", "hit-2", "hit-3"):
        resp = await orders.post(
            f"/admin/orders/{ids[user]}/cancel", params={"reason": "system_failure"}, headers=admin_headers()
        )
        assert resp.json()["close_reason"] == "system_failure"
    await orders.post(f"/admin/orders/{ids['spared']}/cancel", headers=admin_headers())  # ops, not an outage
    async with httpx.AsyncClient(base_url=coupon_url) as coupons:
        template = await coupons.post(
            "/admin/templates",
            json={"name": "sorry", "kind": "compensation", "amount_off": 1_000, "total_quantity": 100},
            headers=admin_headers(),
        )
        issued = await coupons.post(
            "/admin/compensation",
            json={"template_id": template.json()["id"], "sale_id": sale["id"], "reason": "checkout outage"},
            headers=admin_headers(),
        )
        assert issued.status_code == 200, issued.text
        assert len(issued.json()) == 3
        for user, expected in (("hit-1", 1), ("hit-2", 1), ("hit-3", 1), ("spared", 0)):
            wallet = (await coupons.get("/wallet", headers=customer_headers(user))).json()
            assert len([c for c in wallet if c["template"]["kind"] == "compensation"]) == expected


async def test_repurchase_coupons_reach_each_paid_buyer_of_a_sale_once_in_one_batch(
    client: httpx.AsyncClient, orders: httpx.AsyncClient, coupon_url: str
) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=1)
    ids = {}
    for user in ("paid-1", "paid-2", "unpaid", "cancelled", "paid-late"):
        rid = await _buy(client, sale["id"], user)
        ids[user] = (await _order_of(orders, user, rid))["id"]
    for user in ("paid-1", "paid-2"):
        assert (await _pay(orders, user, ids[user])).status_code == 200
    await orders.post(f"/admin/orders/{ids['cancelled']}/cancel", headers=admin_headers())
    batch = {**admin_headers(), "Idempotency-Key": f"repurchase-{sale['id']}"}

    async def repurchase_coupons(user: str) -> int:
        wallet = (await coupons.get("/wallet", headers=customer_headers(user))).json()
        return len([c for c in wallet if c["template"]["name"] == "come back"])

    async with httpx.AsyncClient(base_url=coupon_url) as coupons:
        template = await coupons.post(
            "/admin/templates",
            json={"name": "come back", "kind": "compensation", "amount_off": 500, "total_quantity": 100},
            headers=admin_headers(),
        )
        body = {"template_id": template.json()["id"], "sale_id": sale["id"], "buyers": "paid", "reason": "repurchase"}
        first = await coupons.post("/admin/compensation", json=body, headers=batch)
        assert first.status_code == 200, first.text
        assert len(first.json()) == 2
        # A buyer who pays after the batch ran is reached by repeating it; nobody gets a second coupon.
        assert (await _pay(orders, "paid-late", ids["paid-late"])).status_code == 200
        again = await coupons.post("/admin/compensation", json=body, headers=batch)
        assert len(again.json()) == 3
        assert {c["coupon_id"] for c in first.json()} < {c["coupon_id"] for c in again.json()}
        for user, expected in (("paid-1", 1), ("paid-2", 1), ("paid-late", 1), ("unpaid", 0), ("cancelled", 0)):
            assert await repurchase_coupons(user) == expected, user
        listed = {**body, "user_ids": ["paid-1"]}
        del listed["sale_id"]
        refused = await coupons.post("/admin/compensation", json=listed, headers=admin_headers())
        assert refused.status_code == 422
        stats = (await coupons.get(f"/admin/templates/{template.json()['id']}/stats", headers=admin_headers())).json()
        assert stats["claimed"] == 3


async def test_a_charge_the_timed_out_primary_made_is_refunded_after_the_backup_was_paid(
    client: httpx.AsyncClient, orders: httpx.AsyncClient, paysim: PaySims
) -> None:
    sale = await live_sale(client, quantity=3)
    rid = await _buy(client, sale["id"], "double-charged")
    order = await _order_of(orders, "double-charged", rid)
    # The primary records the charge, then answers after the 1 s payment timeout: we fail over.
    await _faults(paysim, "primary", {"latency_ms": 1500})
    paid = await _pay(orders, "double-charged", order["id"])
    assert paid.status_code == 200, paid.text
    assert paid.json()["payment_provider"] == "backup"
    await _faults(paysim, "primary", None)

    async def primary_charges() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=paysim.primary) as c:
            charges: list[dict[str, Any]] = (await c.get("/payments", params={"order_id": order["id"]})).json()
            return charges

    # The duplicate charge (the check runs every 0.3 s here, so it may be refunded already).
    assert [c["status"] for c in await primary_charges()] in (["succeeded"], ["refunded"])

    async def refunded() -> bool:
        return [c["status"] for c in await primary_charges()] == ["refunded"]

    await wait_for(refunded)
    detail = (await orders.get(f"/admin/orders/{order['id']}", headers=admin_headers())).json()
    outcomes = [(a["provider"], a["outcome"]) for a in detail["attempts"]]
    assert ("primary", "timeout") in outcomes
    assert ("backup", "succeeded") in outcomes
    assert ("primary", "duplicate_refunded") in outcomes
    assert detail["state"] == "paid"

"""What Redis forgets, the record restores: claim counters and coupons used by paid orders after Redis lost data,
and the order service's refusals passed on as refusals. Real Redis, PostgreSQL, order and paysim processes; the
coupon service served by uvicorn on a real port (the order service prices orders through it over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from redis.asyncio import Redis

from services.common.contracts import EventType, claim_stream, encode_event
from services.common.migrate import upgrade
from services.coupon.config import CouponSettings
from services.coupon.main import create_app
from services.coupon.store import RECOVERED_RUN_KEY, claims_key, template_key
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
    order_processes,
    token,
    wait_for,
)

COUPON_DB_URL = db_url_for("coupons_loss")
ORDER_DB_URL = db_url_for("orders_coupon_loss")
COUPON_PORT = free_port()
COUPON_URL = f"http://127.0.0.1:{COUPON_PORT}"
# The coupon service here follows a stream nobody writes: every order event is lost on its way, as when
# Redis loses the last second of the order events stream.
LOST_ORDER_EVENTS = "test:order-events-lost-with-redis"


@pytest.fixture(scope="module")
def order_url(paysim: PaySims) -> Iterator[str]:
    """A real order process: creates orders from purchases, prices them through the coupon service, takes payment."""
    replica = {
        "REPLICA_ID": "order-for-coupon-loss",
        "ORDER_PAYSIM_PRIMARY_URL": paysim.primary,
        "ORDER_PAYSIM_BACKUP_URL": paysim.backup,
        "ORDER_COUPON_URL": COUPON_URL,
        "ORDER_STREAM_DISCOVERY_SECONDS": "0.2",
    }
    with order_processes("orders_coupon_loss", replica) as (url,):
        yield url


async def _serve(settings: CouponSettings, port: int) -> AsyncIterator[str]:
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def _settings(order_url: str, **overrides: Any) -> CouponSettings:
    return CouponSettings(
        env="test",
        database_url=COUPON_DB_URL,
        redis_url=TEST_REDIS_URL,
        order_url=order_url,
        order_events_stream=LOST_ORDER_EVENTS,
        restore_interval_seconds=0.2,
        **overrides,
    )


@pytest.fixture(scope="module")
async def coupons(redis: Redis, order_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the coupon service on COUPON_PORT."""
    await drop_database(db_name_for("coupons_loss"))
    await asyncio.to_thread(upgrade, "coupon", COUPON_DB_URL)
    async for url in _serve(_settings(order_url, replica_id="cp-loss"), COUPON_PORT):
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            yield client


@pytest.fixture(scope="module")
def orders(order_url: str) -> Iterator[httpx.Client]:
    """A client of the order process."""
    with httpx.Client(base_url=order_url, timeout=20) as client:
        yield client


async def _template(coupons: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"name": "loss test", "kind": "fixed_off", "amount_off": 500, "total_quantity": 100, **fields}
    resp = await coupons.post("/admin/templates", json=body, headers=admin_headers())
    assert resp.status_code == 201, resp.text
    template: dict[str, Any] = resp.json()
    return template


async def _claim(coupons: httpx.AsyncClient, template_id: int, user: str, key: str = "k") -> httpx.Response:
    return await coupons.post(f"/templates/{template_id}/claim", headers=customer_headers(user, key))


async def _stats(coupons: httpx.AsyncClient, template_id: int) -> dict[str, Any]:
    resp = await coupons.get(f"/admin/templates/{template_id}/stats", headers=admin_headers())
    assert resp.status_code == 200, resp.text
    stats: dict[str, Any] = resp.json()
    return stats


async def _redis_restarted(redis: Redis) -> None:
    """What a Redis restart looks like to the coupon service: the run it last checked against is gone."""
    await redis.delete(RECOVERED_RUN_KEY)


async def _buy_with_coupon(
    client: httpx.AsyncClient, orders: httpx.Client, sale_id: int, user: str, coupon_id: str
) -> dict[str, Any]:
    resp = await client.post(
        f"/sales/{sale_id}/purchase",
        json={"quantity": 1, "coupon_ids": [coupon_id]},
        headers=customer_headers(user, f"buy-{user}"),
    )
    assert resp.status_code == 202, resp.text
    rid = resp.json()["reservation_id"]

    async def priced() -> dict[str, Any] | None:
        got = await asyncio.to_thread(
            orders.get, f"/orders/by-reservation/{rid}", params={"wait": 5}, headers=customer_headers(user)
        )
        order: dict[str, Any] = got.json()
        return order if got.status_code == 200 and order["pricing"] == "final" else None

    order: dict[str, Any] = await wait_for(priced, timeout=20)
    assert [d["coupon_id"] for d in order["coupons"]["discounts"]] == [coupon_id]
    return order


async def test_coupons_of_orders_paid_while_their_events_were_lost_count_as_used_after_a_redis_restart(
    client: httpx.AsyncClient, coupons: httpx.AsyncClient, orders: httpx.Client, redis: Redis
) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=1, price=10_000)
    template = await _template(coupons, scope="sales", scope_sales=[sale["id"]])
    bought = {}
    for user in ("payer-1", "payer-2", "leaver"):
        claimed = await _claim(coupons, template["id"], user)
        assert claimed.status_code == 201, claimed.text
        bought[user] = await _buy_with_coupon(client, orders, sale["id"], user, claimed.json()["coupon_id"])
    for user in ("payer-1", "payer-2"):
        paid = await asyncio.to_thread(
            orders.post, f"/orders/{bought[user]['id']}/pay", headers=customer_headers(user, "pay")
        )
        assert paid.status_code == 200 and paid.json()["state"] == "paid", paid.text
    cancelled = await asyncio.to_thread(
        orders.post, f"/orders/{bought['leaver']['id']}/cancel", headers=customer_headers("leaver", "cancel")
    )
    assert cancelled.status_code == 200, cancelled.text
    # Their events never arrived: the coupons are still locked.
    assert (await _stats(coupons, template["id"]))["locked"] == 3

    await _redis_restarted(redis)

    async def settled() -> dict[str, Any] | None:
        stats = await _stats(coupons, template["id"])
        return stats if stats["locked"] == 0 else None

    stats = await wait_for(settled, timeout=15)
    assert (stats["used"], stats["discount_given"], stats["claimed"]) == (2, 1_000, 3)
    leaver = (await coupons.get("/wallet", headers=customer_headers("leaver"))).json()
    assert [c["state"] for c in leaver] == ["available"]  # the cancelled order gave its coupon back


async def test_a_coupons_released_event_for_an_order_that_was_paid_uses_its_coupon(
    client: httpx.AsyncClient, coupons: httpx.AsyncClient, orders: httpx.Client, redis: Redis
) -> None:
    sale = await live_sale(client, quantity=5, per_user_limit=1, price=10_000)
    template = await _template(coupons, scope="sales", scope_sales=[sale["id"]])
    claimed = (await _claim(coupons, template["id"], "raced")).json()["coupon_id"]
    order = await _buy_with_coupon(client, orders, sale["id"], "raced", claimed)
    paid = await asyncio.to_thread(orders.post, f"/orders/{order['id']}/pay", headers=customer_headers("raced", "pay"))
    assert paid.status_code == 200, paid.text
    # Two order replicas priced the order and the payment landed between them: the slower one sends
    # order.coupons_released for the paid order, and the order.paid event was lost with Redis.
    released = encode_event(EventType.ORDER_COUPONS_RELEASED, {"order_id": order["id"], "user_id": "raced"})
    await redis.xadd(LOST_ORDER_EVENTS, released)

    async def used() -> bool:
        wallet = (await coupons.get("/wallet", headers=customer_headers("raced"))).json()
        return bool(wallet[0]["state"] == "used")

    await wait_for(used)
    assert (await _stats(coupons, template["id"]))["used"] == 1


async def test_claims_a_restarted_redis_forgot_are_counted_again_from_the_wallets(
    coupons: httpx.AsyncClient, redis: Redis
) -> None:
    template = await _template(coupons, total_quantity=5, per_user_limit=1)
    tid = template["id"]
    ids = []
    for n in range(4):
        claimed = await _claim(coupons, tid, f"kept-{n}")
        assert claimed.status_code == 201
        ids.append(claimed.json()["coupon_id"])
    # AOF everysec lost the last second: the last two claims are in the wallets, not in Redis.
    streamed = await redis.xrange(claim_stream(tid))
    forgotten = [entry_id for entry_id, fields in streamed if orjson.loads(fields["data"])["coupon_id"] in ids[2:]]
    assert len(forgotten) == 2
    await redis.xdel(claim_stream(tid), *forgotten)
    await redis.hset(template_key(tid), "claimed", 2)
    await redis.hdel(claims_key(tid), "kept-2", "kept-3")
    await _redis_restarted(redis)

    async def recounted() -> bool:
        return bool((await _stats(coupons, tid))["claimed"] == 4)

    await wait_for(recounted, timeout=15)
    again = await _claim(coupons, tid, "kept-3", key="after-restart")
    assert again.status_code == 403 and again.json()["code"] == "CLAIM_LIMIT_REACHED"
    late = [await _claim(coupons, tid, f"late-{n}") for n in range(2)]
    assert [r.status_code for r in late] == [201, 409]  # 4 + 1 = the 5 there are, not one more
    await _redis_restarted(redis)  # a second check counts nothing twice
    await wait_for(lambda: _recovered(redis), timeout=15)
    stats = await _stats(coupons, tid)
    assert (stats["claimed"], stats["in_wallets"]) == (5, 5)


async def _recovered(redis: Redis) -> bool:
    return bool(await redis.exists(RECOVERED_RUN_KEY))


async def test_compensation_for_a_sale_the_order_service_refuses_is_a_4xx_not_an_outage(
    coupons: httpx.AsyncClient, order_url: str, redis: Redis
) -> None:
    template = await _template(coupons, kind="compensation", total_quantity=10)
    body = {"template_id": template["id"], "sale_id": 2**62 + 1, "reason": "outage"}
    resp = await coupons.post("/admin/compensation", json=body, headers=admin_headers())
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == "VALIDATION_ERROR"

    # A replica whose service token the order service does not accept: told so, as a refusal.
    refused_settings = _settings(order_url, replica_id="cp-loss-bad-token", service_token=token("coupon", []))
    async for url in _serve(refused_settings, free_port()):
        async with httpx.AsyncClient(base_url=url, timeout=20) as other:
            body = {"template_id": template["id"], "sale_id": 7, "reason": "outage"}
            resp = await other.post("/admin/compensation", json=body, headers=admin_headers())
    assert resp.status_code == 422, resp.text
    assert (resp.json()["code"], resp.json()["upstream_status"]) == ("ORDERS_REFUSED", 403)
    assert (await _stats(coupons, template["id"]))["claimed"] == 0

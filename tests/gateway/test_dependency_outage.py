"""A shared dependency's outage never empties a pool: replicas that still answer stay in it and serve what does
not need the dependency (order views, the sale list, the last stock read); the rest gets the service's own 503
with Retry-After, not the gateway's."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.common.migrate import upgrade
from tests.conftest import (
    PrivateRedis,
    Processes,
    admin_headers,
    customer_headers,
    db_name_for,
    db_url_for,
    drop_database,
    sale_body,
    wait_for,
)
from tests.gateway.conftest import dead_url

ORDER_DB_URL = db_url_for("orders_gw")


async def _true(value: bool) -> bool:
    return value


async def test_a_pool_whose_every_replica_fails_its_check_keeps_routing_to_those_that_answer(
    start_gateway: Any, upstreams: Any
) -> None:
    a, b = await upstreams("a", "b")
    a.ready = b.ready = False
    gw = await start_gateway(order_urls=f"{a.url},{b.url},{dead_url()}", unhealthy_threshold=1)
    pool = gw.pools["order"]
    await wait_for(lambda: _true(not any(r.healthy for r in pool.replicas)))
    await wait_for(lambda: _true(not pool.replicas[2].reachable))
    async with httpx.AsyncClient(base_url=gw.url) as client:
        answers = [await client.get(f"/api/order/orders/{n}") for n in range(6)]
        assert [r.status_code for r in answers] == [200] * 6, answers[0].text
        # Only the replicas that answer their check: nothing listens at the third one.
        assert {r.json()["upstream"] for r in answers} == {"a", "b"}
        view = (await client.get("/admin/upstreams", headers=admin_headers())).json()
        order = next(p for p in view["pools"] if p["pool"] == "order")
        assert order["panic_routed"] >= 6
        assert [r["reachable"] for r in order["replicas"]] == [True, True, False]

        # One replica passes its check again: it alone gets the traffic.
        a.ready = True
        await wait_for(lambda: _true(pool.replicas[0].healthy))
        assert {(await client.get("/api/order/orders")).json()["upstream"] for _ in range(4)} == {"a"}


async def test_a_services_own_503_for_a_dependency_does_not_eject_its_replicas(
    start_gateway: Any, upstreams: Any
) -> None:
    a, b = await upstreams("a", "b")
    a.mode = b.mode = "dependency-down"
    gw = await start_gateway(flashsale_urls=f"{a.url},{b.url}", breaker_min_calls=4, breaker_window=8)
    pool = gw.pools["flashsale"]
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for n in range(30):
            resp = await client.post(
                "/api/flashsale/sales/1/purchase", json={"quantity": 1}, headers={"Idempotency-Key": f"k-{n}"}
            )
            assert resp.status_code == 503
            assert resp.json()["code"] == "STOCK_UNAVAILABLE", resp.text
            assert resp.headers["retry-after"] == "1"
        assert [r.ejections for r in pool.replicas] == [0, 0]
        assert [r.breaker.state for r in pool.replicas] == ["closed", "closed"]
        a.mode = b.mode = "ok"
        assert {(await client.get("/api/flashsale/sales")).json()["upstream"] for _ in range(4)} == {"a", "b"}


@pytest.fixture
def outage_replicas(database: str, private_redis: PrivateRedis) -> Iterator[dict[str, list[str]]]:
    """Two real order and two real flashsale replicas on a Redis of the test's own."""
    asyncio.run(drop_database(db_name_for("orders_gw")))
    upgrade("order", ORDER_DB_URL)
    procs = Processes()
    common = {"REDIS_URL": private_redis.url}
    try:
        urls = {
            "order": [
                procs.start(
                    "services.order.main:app",
                    {
                        **common,
                        "ORDER_DATABASE_URL": ORDER_DB_URL,
                        "REPLICA_ID": f"gw-outage-order-{n}",
                        "ORDER_STREAM_DISCOVERY_SECONDS": "0.2",
                    },
                )
                for n in (1, 2)
            ],
            "flashsale": [
                procs.start(
                    "services.flashsale.main:app",
                    {
                        **common,
                        "FLASHSALE_DATABASE_URL": database,
                        "REPLICA_ID": f"gw-outage-fs-{n}",
                        "FLASHSALE_CATALOG_REFRESH_SECONDS": "0.2",
                    },
                )
                for n in (1, 2)
            ],
        }
        for url in urls["order"] + urls["flashsale"]:
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/healthz/ready", timeout=2).status_code != 200:
                assert time.monotonic() < deadline, f"{url} is not ready"
                time.sleep(0.1)
        yield urls
    finally:
        procs.stop_all()


async def test_a_redis_outage_leaves_order_views_and_cancel_up_and_purchases_answer_their_own_503(
    start_gateway: Any, outage_replicas: dict[str, list[str]], private_redis: PrivateRedis
) -> None:
    gw = await start_gateway(
        order_urls=",".join(outage_replicas["order"]),
        flashsale_urls=",".join(outage_replicas["flashsale"]),
        unhealthy_threshold=1,
    )
    buyer = f"gw-outage-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        created = await client.post("/api/flashsale/admin/sales", json=sale_body(quantity=50), headers=admin_headers())
        assert created.status_code == 201, created.text
        sale_id = created.json()["id"]
        started = await client.post(f"/api/flashsale/admin/sales/{sale_id}/start", headers=admin_headers())
        assert started.status_code == 200, started.text

        async def bought() -> httpx.Response | None:
            resp = await client.post(
                f"/api/flashsale/sales/{sale_id}/purchase",
                json={"quantity": 1},
                headers=customer_headers(buyer, f"buy-{sale_id}"),
            )
            return resp if resp.status_code == 202 else None

        purchase = await wait_for(bought)  # both replicas may need a moment to see the new sale
        rid = purchase.json()["reservation_id"]
        found = await client.get(
            f"/api/order/orders/by-reservation/{rid}?wait=10", headers=customer_headers(buyer), timeout=20
        )
        assert found.status_code == 200, found.text
        order_id = found.json()["id"]
        for _ in range(4):  # both replicas have read the sale's stock since the purchase
            await wait_for(lambda: _remaining_is(client, sale_id, 49))

        private_redis.kill()
        # Every replica's readiness has seen Redis gone, and the gateway has checked every replica since.
        for url in outage_replicas["order"] + outage_replicas["flashsale"]:
            await wait_for(lambda url=url: _redis_seen_down(client, url))
        checks = {id(r): r.health_successes + r.health_failures for p in gw.pools.values() for r in p.replicas}
        await wait_for(
            lambda: _true(
                all(r.health_successes + r.health_failures >= checks[id(r)] + 2 for r in gw.pools["order"].replicas)
            )
        )

        # Order views are PostgreSQL: they still answer, from both replicas.
        for _ in range(4):
            view = await client.get(f"/api/order/orders/{order_id}", headers=customer_headers(buyer))
            assert view.status_code == 200, view.text
        mine = await client.get("/api/order/orders", headers=customer_headers(buyer))
        assert [o["id"] for o in mine.json()] == [order_id]
        again = await client.get(f"/api/order/orders/by-reservation/{rid}", headers=customer_headers(buyer))
        assert again.status_code == 200 and again.json()["id"] == order_id

        # What needs Redis answers the service's own 503 and when to come back, however often it is asked.
        for n in range(25):
            resp = await client.post(
                f"/api/flashsale/sales/{sale_id}/purchase",
                json={"quantity": 1},
                headers=customer_headers(f"{buyer}-{n}", f"down-{n}"),
            )
            assert resp.status_code == 503 and resp.json()["code"] == "STOCK_UNAVAILABLE", resp.text
            assert resp.headers["retry-after"]
        # Nothing sells while Redis is out: the storefront shows the stock as it was last read.
        for _ in range(4):
            stock = await client.get(f"/api/flashsale/sales/{sale_id}")
            assert stock.status_code == 200 and stock.json()["remaining"] == 49, stock.text
        # Cancel changes only the order database (its Idempotency-Key record too): it goes on, and replays.
        cancel_url = f"/api/order/orders/{order_id}/cancel"
        cancel = await client.post(cancel_url, headers=customer_headers(buyer, "cancel-1"))
        assert cancel.status_code == 200 and cancel.json()["state"] == "cancelled", cancel.text
        again_cancel = await client.post(cancel_url, headers=customer_headers(buyer, "cancel-1"))
        assert (again_cancel.status_code, again_cancel.json()) == (200, cancel.json())

        # The storefront's sale list is served from the catalog in memory: the flashsale pool is still there.
        listed = await client.get("/api/flashsale/sales")
        assert listed.status_code == 200 and sale_id in [s["id"] for s in listed.json()]
        assert all(r.ejections == 0 for p in gw.pools.values() for r in p.replicas)


async def _redis_seen_down(client: httpx.AsyncClient, url: str) -> bool:
    body = (await client.get(f"{url}/healthz/ready")).json()
    return str(body["checks"].get("redis", "ok")) != "ok"


async def _remaining_is(client: httpx.AsyncClient, sale_id: int, remaining: int) -> bool:
    resp = await client.get(f"/api/flashsale/sales/{sale_id}")
    return resp.status_code == 200 and resp.json()["remaining"] == remaining

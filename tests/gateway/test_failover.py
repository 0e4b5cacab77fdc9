"""Retries, passive ejection, backup pools and circuit breakers, against tiny upstreams that fail on purpose."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.conftest import admin_headers, wait_for
from tests.gateway.conftest import dead_url

# Passive ejection and health checks out of the way: these tests are about the retry rule alone.
NO_EJECTION = {"eject_consecutive_failures": 1000, "unhealthy_threshold": 1000, "breaker_min_calls": 1000}


async def test_keyless_post_is_never_retried_get_and_keyed_post_are_once(start_gateway: Any, upstreams: Any) -> None:
    a, b = await upstreams("a", "b")
    a.mode = b.mode = "503"
    gw = await start_gateway(order_urls=f"{a.url},{b.url}", **NO_EJECTION)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        resp = await client.post("/api/order/orders/1/pay", json={})
        assert resp.status_code == 503
        assert a.total + b.total == 1, "a POST without Idempotency-Key was sent twice"

        resp = await client.post("/api/order/orders/2/pay", json={}, headers={"Idempotency-Key": "k-2"})
        assert resp.status_code == 503
        assert a.hits["POST /orders/2/pay"] == b.hits["POST /orders/2/pay"] == 1, "retried once, on the other one"

        resp = await client.get("/api/order/orders/3")
        assert resp.status_code == 503
        assert a.hits["GET /orders/3"] == b.hits["GET /orders/3"] == 1

        # One replica answering: a retried request succeeds there.
        b.mode = "ok"
        for n in range(4):
            resp = await client.post(f"/api/order/orders/k{n}/pay", json={}, headers={"Idempotency-Key": f"k{n}"})
            assert resp.status_code == 200
            assert resp.json()["upstream"] == "b"


async def test_connection_errors_retry_only_what_is_safe(start_gateway: Any, upstreams: Any) -> None:
    (live,) = await upstreams("live")
    gw = await start_gateway(coupon_urls=f"{dead_url()},{live.url}", **NO_EJECTION)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        gets = [(await client.get(f"/api/coupon/templates/{n}")).status_code for n in range(4)]
        assert gets == [200] * 4
        posts = [(await client.post(f"/api/coupon/templates/{n}/claim")).status_code for n in range(4)]
        # Round robin sends half of them to the dead replica; those are answered 502, not retried.
        assert sorted(posts) == [200, 200, 502, 502]
        assert sum(v for k, v in live.hits.items() if k.startswith("POST")) == 2
        resp = await client.post("/api/coupon/templates/9/claim")
        if resp.status_code == 502:
            assert resp.json()["code"] == "UPSTREAM_UNAVAILABLE"


async def test_timeouts_are_per_route_and_retried(start_gateway: Any, upstreams: Any) -> None:
    slow, fast, slow_order = await upstreams("slow", "fast", "slow-order")
    slow.mode = slow_order.mode = "slow"
    slow.delay = slow_order.delay = 0.6
    gw = await start_gateway(
        coupon_urls=f"{slow.url},{fast.url}",
        coupon_timeout=0.2,
        order_urls=slow_order.url,
        order_timeout=3.0,
        **NO_EJECTION,
    )
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for n in range(2):
            resp = await client.get(f"/api/coupon/wallet/{n}")
            assert resp.status_code == 200 and resp.json()["upstream"] == "fast"
        statuses = sorted([(await client.post(f"/api/coupon/quote/{n}")).status_code for n in range(2)])
        assert statuses == [200, 504]
        # The order route allows 3 s: the same slowness is no timeout there.
        resp = await client.get("/api/order/orders")
        assert resp.status_code == 200 and resp.json()["upstream"] == "slow-order"


async def test_passive_ejection_grows_and_never_ejects_the_whole_pool(start_gateway: Any, upstreams: Any) -> None:
    bad, good = await upstreams("bad", "good")
    bad.mode = "500"
    gw = await start_gateway(
        inventory_urls=f"{bad.url},{good.url}",
        eject_consecutive_failures=2,
        eject_base_seconds=0.3,
        eject_max_seconds=5,
        breaker_min_calls=1000,
    )
    (bad_replica, good_replica) = gw.pools["inventory"].primaries
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for n in range(4):
            await client.get(f"/api/inventory/skus/{n}/availability")
        assert bad_replica.ejections == 1
        before = bad.total
        for n in range(6):
            resp = await client.get(f"/api/inventory/skus/{n}/availability")
            assert resp.json()["upstream"] == "good"
        assert bad.total == before
        # Back after its period, failing again: ejected for longer.
        await wait_for(lambda: _async(not bad_replica.ejected(_now())), timeout=2)
        for n in range(4):
            await client.get(f"/api/inventory/skus/{n}/availability")
        assert bad_replica.ejections == 2
        assert bad_replica.ejected_until - _now() > 0.35

        # The last replica standing is never ejected, whatever it answers.
        good.mode = "500"
        for n in range(6):
            await client.get(f"/api/inventory/skus/{n}/availability")
        assert good_replica.ejections == 0
        state = (await client.get("/admin/upstreams", headers=admin_headers())).json()
        inventory = next(p for p in state["pools"] if p["pool"] == "inventory")
        assert [r["ejected"] for r in inventory["replicas"]] == [True, False]


async def test_backup_pool_serves_only_when_every_primary_is_out(start_gateway: Any, upstreams: Any) -> None:
    p1, p2, backup = await upstreams("p1", "p2", "backup")
    gw = await start_gateway(
        flashsale_urls=f"{p1.url},{p2.url}", flashsale_backup_urls=backup.url, unhealthy_threshold=1
    )
    async with httpx.AsyncClient(base_url=gw.url) as client:

        async def served_by() -> set[str]:
            return {(await client.get("/api/flashsale/sales")).json()["upstream"] for _ in range(4)}

        assert await served_by() == {"p1", "p2"}
        p1.ready = False
        await wait_for(lambda: _async(not gw.pools["flashsale"].primaries[0].healthy))
        assert await served_by() == {"p2"}
        p2.ready = False
        await wait_for(lambda: _async(not gw.pools["flashsale"].primaries[1].healthy))
        assert await served_by() == {"backup"}
        p1.ready = p2.ready = True
        await wait_for(lambda: _async(all(r.healthy for r in gw.pools["flashsale"].primaries)))
        assert await served_by() == {"p1", "p2"}


async def test_breaker_opens_then_half_open_probe_decides(start_gateway: Any, upstreams: Any) -> None:
    (flaky,) = await upstreams("flaky")
    flaky.mode = "500"
    gw = await start_gateway(
        order_urls=flaky.url,
        breaker_window=4,
        breaker_min_calls=4,
        breaker_failure_ratio=0.5,
        breaker_open_seconds=0.4,
        eject_consecutive_failures=1000,
    )
    breaker = gw.pools["order"].primaries[0].breaker
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for _ in range(4):
            assert (await client.get("/api/order/orders")).status_code == 500  # passed through as it came
        assert breaker.state == "open"
        resp = await client.get("/api/order/orders")
        assert resp.status_code == 503
        assert resp.json()["code"] == "UPSTREAM_UNAVAILABLE"
        assert resp.headers["retry-after"] == "1"
        assert flaky.total == 4, "an open breaker sends nothing upstream"
        state = (await client.get("/admin/upstreams", headers=admin_headers())).json()
        order = next(p for p in state["pools"] if p["pool"] == "order")
        assert order["replicas"][0]["breaker"]["state"] == "open"

        # Half-open: one probe goes through; it fails, so the breaker opens again.
        await asyncio.sleep(0.45)
        assert (await client.get("/api/order/orders")).status_code == 500
        assert flaky.total == 5
        assert breaker.state == "open" and breaker.opens == 2

        # The next probe succeeds: closed, and traffic flows again.
        flaky.mode = "ok"
        await asyncio.sleep(0.45)
        assert (await client.get("/api/order/orders")).status_code == 200
        assert breaker.state == "closed"
        assert (await client.get("/api/order/orders")).status_code == 200


def _now() -> float:
    return time.monotonic()


async def _async(value: bool) -> bool:
    return value


async def test_admin_view_shows_every_gateway_workers_pools(start_gateway: Any, upstreams: Any) -> None:
    bad, good = await upstreams("bad", "good")
    bad.mode = "500"
    shared = {
        "inventory_urls": f"{bad.url},{good.url}",
        "eject_consecutive_failures": 2,
        "eject_base_seconds": 30,
        "eject_max_seconds": 60,
        "unhealthy_threshold": 1000,
        "breaker_min_calls": 1000,
        "view_interval_seconds": 0.2,
    }
    first, second = await start_gateway(**shared), await start_gateway(**shared)
    async with httpx.AsyncClient() as client:
        # Only the first gateway sees the failures and ejects the bad replica.
        for n in range(6):
            await client.get(f"{first.url}/api/inventory/skus/{n}/availability")
        assert first.pools["inventory"].primaries[0].ejections == 1
        assert second.pools["inventory"].primaries[0].ejections == 0

        async def view_from_second() -> dict[str, Any] | None:
            resp = await client.get(f"{second.url}/admin/upstreams", headers=admin_headers())
            assert resp.status_code == 200
            body: dict[str, Any] = resp.json()
            for worker in body["workers"]:
                if worker["worker"] == first.app.api.state.worker:
                    inventory = next(p for p in worker["pools"] if p["pool"] == "inventory")
                    if inventory["replicas"][0]["ejected"]:
                        return body
            return None

        # Asked of the second gateway, the answer tells (within a publishing interval) that the first one
        # has the replica ejected.
        view = await wait_for(view_from_second, timeout=5)
        assert view["worker"] == second.app.api.state.worker
        own = next(p for p in view["pools"] if p["pool"] == "inventory")
        assert [r["ejected"] for r in own["replicas"]] == [False, False]
        theirs = next(w for w in view["workers"] if w["worker"] == first.app.api.state.worker)
        inventory = next(p for p in theirs["pools"] if p["pool"] == "inventory")
        assert [r["ejected"] for r in inventory["replicas"]] == [True, False]
        summary = {r["url"]: r for r in view["replicas"] if r["pool"] == "inventory"}
        assert summary[bad.url]["workers"] == 2 and summary[bad.url]["ejected_in"] == 1
        assert summary[bad.url]["available_in"] == 1
        assert summary[good.url]["available_in"] == 2 and summary[good.url]["ejected_in"] == 0
        assert view["workers_error"] is None

        # The view is admin-only, like every /admin path.
        assert (await client.get(f"{second.url}/admin/upstreams")).status_code == 401

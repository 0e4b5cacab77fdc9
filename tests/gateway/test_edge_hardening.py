"""Edge cases a hostile client tries on the gateway: slow bodies holding pool slots, a key stripped by Connection,
two Authorization headers, internal endpoints, stale idle upstream connections."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import customer_headers, token
from tests.gateway.test_failover import NO_EJECTION


async def _trickle(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that announces 100 body bytes, sends one, and waits."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /api/inventory/holds HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
    await writer.drain()
    return reader, writer


async def test_a_trickled_body_holds_no_pool_slot_and_times_out(start_gateway: Any, upstreams: Any) -> None:
    (a,) = await upstreams("a")
    gw = await start_gateway(inventory_urls=a.url, max_in_flight_per_pool=2, body_timeout_seconds=0.5)
    slow = [await _trickle(gw.port) for _ in range(4)]  # more than the pool's slots
    async with httpx.AsyncClient(base_url=gw.url) as client:
        ok = await client.get("/api/inventory/skus/X/availability")
        assert ok.status_code == 200, ok.text  # not shed: the trickling clients hold no slot
    for reader, writer in slow:
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # 408, then the connection is closed
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b"REQUEST_TIMEOUT" in answer
        writer.close()
    assert a.total == 1  # none of them reached the upstream


async def test_a_key_listed_in_connection_does_not_make_a_post_retryable(start_gateway: Any, upstreams: Any) -> None:
    a, b = await upstreams("a", "b")
    a.mode = b.mode = "503"
    gw = await start_gateway(order_urls=f"{a.url},{b.url}", **NO_EJECTION)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        headers = {"Idempotency-Key": "k1", "Connection": "close, idempotency-key"}
        resp = await client.post("/api/order/orders/1/pay", json={}, headers=headers)
    assert resp.status_code == 503
    assert a.total + b.total == 1, "the key was not forwarded, so the POST must not be sent twice"


async def test_two_authorization_headers_are_refused(start_gateway: Any, upstreams: Any) -> None:
    (a,) = await upstreams("a")
    gw = await start_gateway(flashsale_urls=a.url)
    headers = [
        ("authorization", f"Bearer {token('attacker', ['customer'])}"),
        ("authorization", f"Bearer {token('victim', ['customer'])}"),
    ]
    async with httpx.AsyncClient(base_url=gw.url) as client:
        resp = await client.get("/api/flashsale/sales", headers=headers)
        assert resp.status_code == 400 and resp.json()["code"] == "BAD_REQUEST"
        one = await client.get("/api/flashsale/sales", headers=customer_headers("attacker"))
        assert one.status_code == 200
    assert a.total == 1


async def test_service_health_and_metrics_are_not_proxied(start_gateway: Any, upstreams: Any) -> None:
    (a,) = await upstreams("a")
    gw = await start_gateway(flashsale_urls=a.url)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for path in ("/api/flashsale/metrics", "/api/flashsale/healthz/ready", "/api/flashsale/METRICS"):
            resp = await client.get(path)
            assert resp.status_code == 404, path
        assert (await client.get("/metrics")).status_code == 200  # the gateway's own
    assert a.total == 0


async def test_an_idle_upstream_connection_is_not_reused_after_its_keep_alive(
    start_gateway: Any, upstreams: Any
) -> None:
    (a,) = await upstreams("a")
    gw = await start_gateway(order_urls=a.url, **NO_EJECTION)
    pool = gw.pools["order"]
    replica = pool.replicas[0]
    async with httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.get("/api/order/orders/1")).status_code == 200
        stale = replica.client.idle[-1]
        stale.idle_since -= 60  # as if it had waited a minute
        assert (await client.post("/api/order/orders/1/pay", json={})).status_code == 200
    assert stale.closed
    assert a.total == 2


async def test_redirects_point_through_the_gateway_not_at_a_replica(start_gateway: Any, upstreams: Any) -> None:
    (a,) = await upstreams("a")
    gw = await start_gateway(order_urls=a.url)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for location, public in (
            (f"{a.url}/orders?x=1", "/api/order/orders?x=1"),
            ("/orders/7", "/api/order/orders/7"),
            ("https://pay.example/checkout", "https://pay.example/checkout"),
        ):
            resp = await client.get("/api/order/orders", headers={"x-echo-status": "307", "x-echo-location": location})
            assert resp.status_code == 307
            assert resp.headers["location"] == public

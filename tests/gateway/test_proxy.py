"""Routing and header rules through a real gateway to a real (tiny, echoing) upstream."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import admin_headers, customer_headers, wait_for


async def test_routes_strip_the_prefix_and_pass_status_body_and_headers(start_gateway: Any, upstreams: Any) -> None:
    inventory, order = await upstreams("inventory", "order")
    gw = await start_gateway(inventory_urls=inventory.url, order_urls=order.url)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        resp = await client.get("/api/order/orders/42", params={"limit": "5"}, headers={"X-Echo-Header": "kept"})
        assert resp.status_code == 200
        echoed = resp.json()
        assert echoed["upstream"] == "order"
        assert (echoed["path"], echoed["query"]) == ("/orders/42", "limit=5")
        assert resp.headers["x-custom"] == "kept"
        assert resp.headers["x-upstream"] == "order"

        resp = await client.post("/api/inventory/holds", content=b'{"sku":"A"}', headers={"X-Echo-Status": "418"})
        assert resp.status_code == 418
        assert resp.json()["body"] == '{"sku":"A"}'
        assert resp.json()["upstream"] == "inventory"

        resp = await client.get("/api/nowhere/x")
        assert resp.status_code == 404
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["code"] == "NOT_FOUND"


async def test_client_identity_headers_never_reach_an_upstream(start_gateway: Any, upstreams: Any) -> None:
    (echo,) = await upstreams("flashsale")
    gw = await start_gateway(flashsale_urls=echo.url)
    forged = {"X-User-Id": "victim", "X-User-Roles": "admin", "x-user-id": "victim2"}
    async with httpx.AsyncClient(base_url=gw.url) as client:
        resp = await client.get("/api/flashsale/sales", headers={**customer_headers("mallory"), **forged})
        assert resp.status_code == 200
        seen = resp.json()["headers"]
        assert seen["x-user-id"] == "mallory"
        assert seen["x-user-roles"] == "customer"
        assert seen["authorization"].startswith("Bearer ")  # upstreams verify the token themselves too

        resp = await client.get("/api/flashsale/sales", headers=forged)
        assert resp.status_code == 200
        seen = resp.json()["headers"]
        assert "x-user-id" not in seen and "x-user-roles" not in seen
    # Whatever the client sent, the upstream only ever saw the gateway's own identity headers.
    assert [s["headers"].get("x-user-id") for s in echo.seen] == ["mallory", None]


async def test_hop_by_hop_headers_are_dropped_and_request_ids_pass_through(start_gateway: Any, upstreams: Any) -> None:
    (echo,) = await upstreams("coupon")
    gw = await start_gateway(coupon_urls=echo.url)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        resp = await client.get(
            "/api/coupon/templates",
            headers={
                "Connection": "keep-alive, X-Private-Hop",
                "X-Private-Hop": "secret",
                "Proxy-Authorization": "Basic abc",
                "TE": "trailers",
                "X-Request-Id": "req-123",
                "X-Kept": "yes",
            },
        )
        assert resp.status_code == 200
        seen = resp.json()["headers"]
        for hop in ("x-private-hop", "proxy-authorization", "te"):
            assert hop not in seen
        assert seen["x-kept"] == "yes"
        assert seen["x-request-id"] == "req-123"
        assert resp.headers["x-request-id"] == "req-123"
        assert "transfer-encoding" not in resp.headers

        resp = await client.get("/api/coupon/templates")
        generated = resp.json()["headers"]["x-request-id"]
        assert len(generated) == 32
        assert resp.headers["x-request-id"] == generated


async def test_admin_paths_need_the_admin_role(start_gateway: Any, upstreams: Any) -> None:
    (echo,) = await upstreams("flashsale")
    gw = await start_gateway(flashsale_urls=echo.url)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for path in ("/api/flashsale/admin/sales", "/api/flashsale//admin/sales", "/api/flashsale/ADMIN/sales"):
            resp = await client.get(path)
            assert resp.status_code == 401, path
            assert resp.json()["code"] == "UNAUTHENTICATED"
            resp = await client.get(path, headers=customer_headers("eve"))
            assert resp.status_code == 403, path
            assert resp.json()["code"] == "FORBIDDEN"
        assert echo.total == 0
        resp = await client.get("/api/flashsale/admin/sales", headers=admin_headers())
        assert resp.status_code == 200
        assert echo.total == 1

        resp = await client.get("/api/flashsale/sales", headers={"Authorization": "Bearer not-a-token"})
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == "Bearer"

        # The gateway's own admin view.
        assert (await client.get("/admin/upstreams")).status_code == 401
        assert (await client.get("/admin/upstreams", headers=customer_headers("eve"))).status_code == 403
        resp = await client.get("/admin/upstreams", headers=admin_headers())
        assert resp.status_code == 200
        pools = {p["pool"]: p for p in resp.json()["pools"]}
        assert set(pools) == {"inventory", "flashsale", "coupon", "order"}
        (replica,) = pools["flashsale"]["replicas"]
        assert replica["url"] == echo.url
        assert replica["breaker"]["state"] == "closed"
        assert {"healthy", "ejected", "ejections", "in_flight"} <= set(replica)


async def test_health_metrics_and_body_limit(start_gateway: Any, upstreams: Any) -> None:
    (echo,) = await upstreams("order")
    gw = await start_gateway(order_urls=echo.url, max_body_bytes=1000)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.get("/healthz/live")).status_code == 200
        assert (await client.get("/healthz/ready")).status_code == 200
        resp = await client.post("/api/order/orders/1/pay", content=b"x" * 2000)
        assert resp.status_code == 413
        assert resp.json()["code"] == "PAYLOAD_TOO_LARGE"
        assert (await client.get("/api/order/orders")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert f'gateway_requests_total{{route="order",status="200",upstream="{echo.url}"}}' in metrics
        assert 'gateway_request_duration_seconds_bucket{le="0.001",route="order"' in metrics


def _requests_counted(metrics: str) -> Counter[tuple[str, str, str]]:
    """gateway_requests_total by (route, upstream, status), as /metrics exposes it."""
    counted: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(metrics):
        if family.name == "gateway_requests":
            for sample in family.samples:
                if sample.name == "gateway_requests_total":
                    labels = sample.labels
                    counted[labels["route"], labels["upstream"], labels["status"]] = int(sample.value)
    return counted


async def test_every_answer_is_counted_under_its_route_upstream_and_status(start_gateway: Any, upstreams: Any) -> None:
    (echo,) = await upstreams("coupon")
    gw = await start_gateway(coupon_urls=echo.url, coupon_timeout=0.3, max_body_bytes=1000)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        before = _requests_counted((await client.get("/metrics")).text)
        two_tokens = [("authorization", "Bearer a"), ("authorization", "Bearer b")]
        assert (await client.get("/api/coupon/templates", headers=two_tokens)).status_code == 400
        assert (await client.get("/api/coupon/healthz/ready")).status_code == 404
        assert (await client.get("/api/coupon/admin/templates")).json()["detail"] == "Missing bearer token"
        assert (await client.get("/api/coupon/admin/templates", headers=customer_headers("eve"))).status_code == 403
        assert (await client.post("/api/coupon/claims", content=b"x" * 2000)).status_code == 413

        # A HEAD answer ends at its headers: relayed at once, without waiting for a body that never comes.
        resp = await client.head("/api/coupon/templates")
        assert (resp.status_code, resp.content, resp.headers["x-upstream"]) == (200, b"", "coupon")

        # A replica that does not answer in time: 504, counted under that replica.
        echo.mode = "hang"
        resp = await client.get("/api/coupon/templates", headers=customer_headers("ann"))
        assert (resp.status_code, resp.json()["code"]) == (504, "UPSTREAM_TIMEOUT")
        echo.mode = "ok"
        echo.release.set()

        # A client gone before its announced body arrived: nothing to answer, counted as 499.
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"POST /api/coupon/claims HTTP/1.1\r\nhost: gw\r\ncontent-length: 100\r\n\r\n{")
        await writer.drain()
        writer.close()

        async def counted() -> Counter[tuple[str, str, str]]:
            return _requests_counted((await client.get("/metrics")).text) - before

        async def client_gone_counted() -> bool:
            return ("coupon", "none", "499") in await counted()

        await wait_for(client_gone_counted)
        assert await counted() == Counter(
            {
                ("unmatched", "none", "400"): 1,
                ("unmatched", "none", "404"): 1,
                ("coupon", "none", "401"): 1,
                ("coupon", "none", "403"): 1,
                ("coupon", "none", "413"): 1,
                ("coupon", echo.url, "200"): 1,
                ("coupon", echo.url, "504"): 1,
                ("coupon", "none", "499"): 1,
            }
        )

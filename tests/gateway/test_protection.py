"""Rate limits (real Redis), load shedding, and the demo token endpoint."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from gateway.config import GatewaySettings
from tests.conftest import admin_headers, customer_headers
from tests.gateway.conftest import dead_url


async def test_per_user_bucket_answers_429_with_retry_after(start_gateway: Any, upstreams: Any) -> None:
    (echo,) = await upstreams("flashsale")
    gw = await start_gateway(flashsale_urls=echo.url, user_rate=1, user_burst=3)
    user = f"bot-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=gw.url) as client:
        statuses = [
            (await client.get("/api/flashsale/sales", headers=customer_headers(user))).status_code for _ in range(4)
        ]
        assert statuses == [200, 200, 200, 429]
        resp = await client.get("/api/flashsale/sales", headers=customer_headers(user))
        assert resp.status_code == 429
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["code"] == "RATE_LIMITED"
        assert int(resp.headers["retry-after"]) >= 1
        assert echo.total == 3, "a limited request never reaches the upstream"
        # Another user is not affected.
        assert (await client.get("/api/flashsale/sales", headers=customer_headers(f"{user}-2"))).status_code == 200


async def test_purchase_route_has_a_tighter_bucket(start_gateway: Any, upstreams: Any) -> None:
    (echo,) = await upstreams("flashsale")
    gw = await start_gateway(flashsale_urls=echo.url, purchase_user_rate=0.5, purchase_user_burst=2)
    user = f"hoarder-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=gw.url) as client:
        purchases = []
        for n in range(3):
            resp = await client.post(
                "/api/flashsale/sales/7/purchase", json={"quantity": 1}, headers=customer_headers(user, f"k{n}")
            )
            purchases.append(resp.status_code)
        assert purchases == [200, 200, 429]
        assert int(resp.headers["retry-after"]) == 2  # half a token per second: 2 s until the next one
        # Browsing stays open to the same user.
        assert (await client.get("/api/flashsale/sales/7", headers=customer_headers(user))).status_code == 200


async def test_an_admin_scripting_admin_routes_has_its_own_limit_not_the_shoppers(
    start_gateway: Any, upstreams: Any
) -> None:
    (echo,) = await upstreams("inventory")
    gw = await start_gateway(
        inventory_urls=echo.url,
        user_rate=1,
        user_burst=2,
        ip_rate=1,
        ip_burst=2,
        admin_rate=1,
        admin_burst=12,
        trusted_proxy_hops=1,
    )
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    ops = {**admin_headers(f"ops-{uuid.uuid4().hex[:8]}"), "X-Forwarded-For": ip}
    async with httpx.AsyncClient(base_url=gw.url) as client:
        # Far past the shopper's burst of 2 (and the address's), every restock of the script goes through.
        restocks = [
            (await client.post(f"/api/inventory/admin/skus/S{n}/restock", json={"units": 5}, headers=ops)).status_code
            for n in range(12)
        ]
        assert restocks == [200] * 12
        # Still a limit, its own: the admin's bucket runs out too.
        resp = await client.post("/api/inventory/admin/skus/S12/restock", json={"units": 5}, headers=ops)
        assert resp.status_code == 429 and resp.json()["code"] == "RATE_LIMITED"
        assert echo.total == 12
        # The same identity on a shopper's route meets the shopper's bucket, which the script did not drain.
        assert (await client.get("/api/inventory/skus/S1/availability", headers=ops)).status_code == 200


async def test_per_ip_bucket_for_anonymous_clients(start_gateway: Any, upstreams: Any) -> None:
    (echo,) = await upstreams("flashsale")
    gw = await start_gateway(flashsale_urls=echo.url, ip_rate=1, ip_burst=2, trusted_proxy_hops=1)
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    async with httpx.AsyncClient(base_url=gw.url) as client:
        statuses = [
            (await client.get("/api/flashsale/sales", headers={"X-Forwarded-For": ip})).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        seen = echo.seen[-1]["headers"]["x-forwarded-for"]
        assert seen.endswith(ip)


async def test_limiter_fails_open_when_redis_is_down(start_gateway: Any, upstreams: Any) -> None:
    (echo,) = await upstreams("flashsale")
    gw = await start_gateway(
        flashsale_urls=echo.url, redis_url=dead_url().replace("http", "redis"), user_rate=1, user_burst=1
    )
    async with httpx.AsyncClient(base_url=gw.url) as client:
        statuses = [
            (await client.get("/api/flashsale/sales", headers=customer_headers("u-open"))).status_code for _ in range(5)
        ]
    assert statuses == [200] * 5


async def test_load_shedding_answers_503_at_once_instead_of_queueing(start_gateway: Any, upstreams: Any) -> None:
    (stuck,) = await upstreams("stuck")
    stuck.mode = "hang"
    gw = await start_gateway(order_urls=stuck.url, max_in_flight_per_pool=2, order_timeout=10)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        held = [asyncio.create_task(client.get(f"/api/order/orders/{n}")) for n in range(2)]
        while stuck.total < 2:
            await asyncio.sleep(0.01)
        # Both slots are taken and the upstream has answered nothing: the next ones are shed right away.
        for _ in range(3):
            resp = await client.get("/api/order/orders/x")
            assert resp.status_code == 503
            assert resp.json()["code"] == "OVERLOADED"
            assert resp.headers["retry-after"] == "1"
        assert not any(t.done() for t in held), "shed answers came while the pool was still full"
        assert stuck.total == 2
        stuck.release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await client.get("/api/order/orders/after")).status_code == 200
        assert gw.pools["order"].shed == 3


async def test_dev_token_endpoint_only_with_the_flag(start_gateway: Any, upstreams: Any) -> None:
    (echo,) = await upstreams("flashsale")
    off = await start_gateway(flashsale_urls=echo.url)
    on = await start_gateway(flashsale_urls=echo.url, dev_tokens=True)
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{off.url}/api/auth/token", json={"user_id": "demo", "roles": ["admin"]})
        assert resp.status_code == 404
        resp = await client.post(f"{on.url}/api/auth/token", json={"user_id": "demo-ops", "roles": ["admin"]})
        assert resp.status_code == 200
        body = resp.json()
        assert body["token_type"] == "bearer" and body["roles"] == ["admin"] and body["expires_in"] > 0
        auth = {"Authorization": f"Bearer {body['access_token']}"}
        assert (await client.get(f"{on.url}/admin/upstreams", headers=auth)).status_code == 200
        resp = await client.post(f"{on.url}/api/auth/token", json={"user_id": ""})
        assert resp.status_code == 422
    with pytest.raises(ValueError, match="GATEWAY_DEV_TOKENS"):
        GatewaySettings(env="production", jwt_secret="a-real-secret-" * 4, dev_tokens=True)


async def test_concurrent_requests_share_one_bucket_exactly(start_gateway: Any, upstreams: Any) -> None:
    (echo,) = await upstreams("order")
    gw = await start_gateway(order_urls=echo.url, user_rate=0.001, user_burst=10)
    headers = customer_headers(f"burst-{uuid.uuid4().hex[:8]}")
    async with httpx.AsyncClient(base_url=gw.url, limits=httpx.Limits(max_connections=50)) as client:
        answers = await asyncio.gather(*(client.get("/api/order/orders", headers=headers) for _ in range(50)))
    # Pipelined on one connection, each request still makes its own atomic take: exactly the burst passes.
    assert sorted(r.status_code for r in answers) == [200] * 10 + [429] * 40
    assert echo.total == 10


async def test_made_up_tokens_meet_the_ip_bucket_before_any_signature_check(start_gateway: Any, upstreams: Any) -> None:
    (echo,) = await upstreams("flashsale")
    gw = await start_gateway(flashsale_urls=echo.url, ip_rate=0.001, ip_burst=3, trusted_proxy_hops=1)
    attacker = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    forged = customer_headers("mallory")["Authorization"][:-4] + "AAAA"  # a token whose signature is wrong
    async with httpx.AsyncClient(base_url=gw.url) as client:
        statuses = []
        for n in range(6):
            headers = {"Authorization": f"{forged}{n}", "X-Forwarded-For": attacker}
            statuses.append((await client.get("/api/flashsale/sales", headers=headers)).status_code)
        # Three refused tokens empty the address's bucket; from then on it gets 429s, and past the first of
        # them without its tokens being checked at all.
        assert statuses == [401, 401, 401, 429, 429, 429]
        refused = await client.get(
            "/api/flashsale/sales", headers={"Authorization": forged, "X-Forwarded-For": attacker}
        )
        assert refused.json()["code"] == "RATE_LIMITED" and int(refused.headers["retry-after"]) >= 1
        assert echo.total == 0  # none of it reached the service
        # Even a real token from that address is answered 429 before its signature is looked at.
        valid = customer_headers(f"from-attacker-{uuid.uuid4().hex[:8]}")["Authorization"]
        blocked = await client.get(
            "/api/flashsale/sales", headers={"Authorization": valid, "X-Forwarded-For": attacker}
        )
        assert blocked.status_code == 429
        assert gw.app.proxy.verifier.cached(valid.removeprefix("Bearer ")) is None

        # A real customer behind another address pays one IP token per request.
        honest = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
        headers = {**customer_headers(f"shopper-{uuid.uuid4().hex[:8]}"), "X-Forwarded-For": honest}
        statuses = [(await client.get("/api/flashsale/sales", headers=headers)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]

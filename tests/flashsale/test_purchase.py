"""The purchase under a crowd, against two real replicas, and idempotent replays."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import httpx
import orjson
from fastapi import FastAPI
from redis.asyncio import Redis

from services.common.contracts import purchase_stream
from services.flashsale.store import bought_key, reservations_key, sale_key
from tests.conftest import customer_headers, live_sale, sale_stats, wait_for


async def test_crowd_of_5000_attempts_on_500_units_sells_exactly_500(
    client: httpx.AsyncClient, replicas: list[str], redis: Redis
) -> None:
    sale = await live_sale(client, quantity=500, per_user_limit=2)
    sale_id = sale["id"]
    users = [f"crowd-{n}" for n in range(2500)]
    # Every user tries twice; odd users ask for 2 units first, so their second try meets the limit.
    attempts = []
    for n, user in enumerate(users):
        attempts.append((user, 2 if n % 2 else 1, f"{user}-a"))
        attempts.append((user, 1, f"{user}-b"))
    headers = {user: customer_headers(user) for user in users}
    # 64 connections to each replica keep 128 purchases in flight at once; httpx scans its whole pool on every
    # request, so more connections cost the test client more CPU than they add to the race.
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=30) for url in replicas]
    gate = asyncio.Semaphore(128)
    pick = itertools.cycle(clients)

    async def buy(user: str, qty: int, key: str) -> tuple[str, int, httpx.Response]:
        async with gate:
            resp = await next(pick).post(
                f"/sales/{sale_id}/purchase",
                json={"quantity": qty},
                headers={**headers[user], "Idempotency-Key": key},
            )
            return user, qty, resp

    try:
        results = await asyncio.gather(*(buy(*a) for a in attempts))
    finally:
        for c in clients:
            await c.aclose()

    accepted = [(u, q, r.json()) for u, q, r in results if r.status_code == 202]
    rejected = [r for _u, _q, r in results if r.status_code != 202]
    units = sum(body["quantity"] for _u, _q, body in accepted)
    assert units == 500

    per_user: Counter[str] = Counter()
    for user, qty, body in accepted:
        assert body["quantity"] == qty
        per_user[user] += qty
    assert max(per_user.values()) <= 2

    codes = Counter(r.json()["code"] for r in rejected)
    assert set(codes) <= {"SOLD_OUT", "INSUFFICIENT_STOCK", "PURCHASE_LIMIT_EXCEEDED"}, codes
    assert all(r.headers["content-type"].startswith("application/problem+json") for r in rejected)
    assert codes["PURCHASE_LIMIT_EXCEEDED"] > 0

    # Each 202 has exactly one reservation and one stream event.
    reservation_ids = [body["reservation_id"] for _u, _q, body in accepted]
    assert len(set(reservation_ids)) == len(reservation_ids)
    stored = await redis.hgetall(reservations_key(sale_id))
    assert set(stored) == set(reservation_ids)
    events = await redis.xrange(purchase_stream(sale_id))
    assert len(events) == len(reservation_ids)
    event_ids = sorted(orjson.loads(f["data"])["reservation_id"] for _i, f in events)
    assert event_ids == sorted(reservation_ids)

    bought = {u: int(v) for u, v in (await redis.hgetall(bought_key(sale_id))).items()}
    assert bought == dict(per_user)

    detail = (await client.get(f"/sales/{sale_id}")).json()
    assert detail["remaining"] == 0
    assert detail["sold_out"] is True


async def test_same_key_50_times_concurrently_gives_one_reservation(client: httpx.AsyncClient, redis: Redis) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=5)
    sale_id = sale["id"]
    headers = customer_headers("idem-user", key="order-button-click-1")

    responses = await asyncio.gather(
        *(client.post(f"/sales/{sale_id}/purchase", json={"quantity": 2}, headers=headers) for _ in range(50))
    )

    assert {r.status_code for r in responses} == {202}
    assert len({r.content for r in responses}) == 1
    assert await redis.hlen(reservations_key(sale_id)) == 1
    assert await redis.xlen(purchase_stream(sale_id)) == 1
    assert (await sale_stats(client, sale_id))["remaining"] == 8

    other_body = await client.post(f"/sales/{sale_id}/purchase", json={"quantity": 1}, headers=headers)
    assert other_body.status_code == 422
    assert other_body.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert await redis.hlen(reservations_key(sale_id)) == 1
    assert (await sale_stats(client, sale_id))["remaining"] == 8


async def test_same_key_from_another_user_is_a_different_purchase(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=10)
    first = await client.post(
        f"/sales/{sale['id']}/purchase", json={"quantity": 1}, headers=customer_headers("key-a", key="k-1")
    )
    second = await client.post(
        f"/sales/{sale['id']}/purchase", json={"quantity": 1}, headers=customer_headers("key-b", key="k-1")
    )
    assert first.status_code == second.status_code == 202
    assert first.json()["reservation_id"] != second.json()["reservation_id"]


async def test_limit_holds_across_separate_purchases(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=3)
    url = f"/sales/{sale['id']}/purchase"
    ok = await client.post(url, json={"quantity": 2}, headers=customer_headers("lim", key="1"))
    over = await client.post(url, json={"quantity": 2}, headers=customer_headers("lim", key="2"))
    last = await client.post(url, json={"quantity": 1}, headers=customer_headers("lim", key="3"))
    assert ok.status_code == 202
    assert over.status_code == 403
    assert over.json()["code"] == "PURCHASE_LIMIT_EXCEEDED"
    assert over.json()["bought"] == 2
    assert last.status_code == 202
    assert (await sale_stats(client, sale["id"]))["remaining"] == 7


async def test_sold_out_is_answered_from_memory_after_the_first_refusal(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    sale = await live_sale(client, quantity=1, per_user_limit=1)
    url = f"/sales/{sale['id']}/purchase"
    assert (await client.post(url, json={"quantity": 1}, headers=customer_headers("so-1", key="x"))).status_code == 202
    # Put a unit back behind the service's back: a replica that asked Redis would sell it.
    await redis.hset(sale_key(sale["id"]), "remaining", 1)
    refusals = [
        await client.post(url, json={"quantity": 1}, headers=customer_headers(f"so-{n}", key="x")) for n in range(2, 7)
    ]
    assert {r.status_code for r in refusals} == {409}
    assert {r.json()["code"] for r in refusals} == {"SOLD_OUT"}
    # The local flag is short-lived: once it lapses, the script decides again.
    later = await wait_for(
        lambda: _buy_ok(client, url, customer_headers("so-late", key="late")), timeout=10, interval=0.5
    )
    assert later.status_code == 202


async def _buy_ok(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response | None:
    resp = await client.post(url, json={"quantity": 1}, headers=headers)
    return resp if resp.status_code == 202 else None


async def test_the_purchase_is_documented_in_openapi(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/sales/{sale_id}/purchase"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["properties"]["quantity"]["maximum"] == 100
    assert {"202", "409", "423", "429"} <= set(operation["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"])


async def test_same_key_with_other_coupons_is_another_request(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=10)
    url = f"/sales/{sale['id']}/purchase"
    headers = customer_headers("coupon-key", key="k-1")
    first = await client.post(url, json={"quantity": 1, "coupon_ids": ["c1"]}, headers=headers)
    same = await client.post(url, json={"quantity": 1, "coupon_ids": ["c1"]}, headers=headers)
    other = await client.post(url, json={"quantity": 1}, headers=headers)
    assert first.status_code == same.status_code == 202
    assert first.content == same.content
    assert other.status_code == 422
    assert other.json()["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_purchases_go_on_after_redis_drops_its_scripts_and_the_connection(
    client: httpx.AsyncClient, redis: Redis, app: FastAPI
) -> None:
    sale = await live_sale(client, quantity=10)
    url = f"/sales/{sale['id']}/purchase"
    first = await client.post(url, json={"quantity": 1}, headers=customer_headers("pipe-a", key="1"))
    assert first.status_code == 202

    await redis.script_flush()  # as after a Redis restart: the purchase script is gone (NOSCRIPT)
    second = await client.post(url, json={"quantity": 1}, headers=customer_headers("pipe-b", key="1"))
    assert second.status_code == 202, second.text

    # Redis drops the purchase connection (found by its address: other connections run scripts too): the
    # next purchase goes out on a new one.
    pipe = app.state.service.core.store._purchase.conn
    host, port = pipe.transport.get_extra_info("sockname")[:2]
    assert await redis.client_kill_filter(addr=f"{host}:{port}") == 1
    await asyncio.sleep(0.1)
    third = await client.post(url, json={"quantity": 1}, headers=customer_headers("pipe-c", key="1"))
    assert third.status_code == 202, third.text

    # Three units sold, each reservation once, nothing lost on the way.
    assert (await sale_stats(client, sale["id"]))["remaining"] == 7
    assert await redis.hlen(reservations_key(sale["id"])) == 3

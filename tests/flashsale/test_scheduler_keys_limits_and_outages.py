"""Edge cases: the scheduler vs an automatic pause, key collisions, the rate limit on
refused retries, Redis down on admin calls, and restock bounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from services.flashsale.config import FlashSaleSettings
from services.flashsale.guards import UserRateLimiter
from services.flashsale.main import create_app
from services.flashsale.store import sale_key
from tests.conftest import admin_headers, create_sale, customer_headers, live_sale, sale_stats, wait_for


async def _buy(client: httpx.AsyncClient, sale_id: int, user: str, key: str, qty: int = 1) -> httpx.Response:
    return await client.post(f"/sales/{sale_id}/purchase", json={"quantity": qty}, headers=customer_headers(user, key))


async def test_scheduler_does_not_undo_a_pause_the_script_made(client: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    sale = await create_sale(
        client,
        quantity=4,
        per_user_limit=4,
        low_stock_threshold_pct=50,
        low_stock_policy="alert_and_pause",
        starts_at=(now + timedelta(seconds=1)).isoformat(),
        ends_at=(now + timedelta(hours=1)).isoformat(),
    )
    sale_id = sale["id"]
    assert (await client.post(f"/admin/sales/{sale_id}/schedule", headers=admin_headers())).status_code == 200
    # Buy 2 of 4 the moment the window opens: the threshold (2 units) is crossed and the script pauses.
    first = await wait_for(lambda: _ok(client, sale_id, "sch-1", "k", 2), timeout=10, interval=0.02)
    assert first.status_code == 202

    async def recorded(state: str) -> bool:
        resp = await client.get(f"/admin/sales/{sale_id}", headers=admin_headers())
        return bool(resp.json()["state"] == state)

    await wait_for(lambda: recorded("paused"))
    await asyncio.sleep(0.5)  # several scheduler ticks
    refused = await _buy(client, sale_id, "sch-2", "k")
    assert refused.status_code == 423
    assert await recorded("paused")
    assert (await sale_stats(client, sale_id))["remaining"] == 2
    assert (await client.post(f"/admin/sales/{sale_id}/resume", headers=admin_headers())).status_code == 200
    assert (await _buy(client, sale_id, "sch-2", "k2")).status_code == 202


async def _ok(client: httpx.AsyncClient, sale_id: int, user: str, key: str, qty: int) -> httpx.Response | None:
    resp = await _buy(client, sale_id, user, key, qty)
    return resp if resp.status_code == 202 else None


async def test_user_and_key_pairs_cannot_collide(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=10)
    victim = await _buy(client, sale["id"], "a", "b:c")
    attacker = await _buy(client, sale["id"], "a:b", "c")
    assert victim.status_code == attacker.status_code == 202
    assert victim.json()["reservation_id"] != attacker.json()["reservation_id"]
    assert (await sale_stats(client, sale["id"]))["reserved"] == 2


async def test_retrying_a_refused_key_is_rate_limited(client: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    sale = await create_sale(
        client, starts_at=(now + timedelta(hours=1)).isoformat(), ends_at=(now + timedelta(hours=2)).isoformat()
    )
    await client.post(f"/admin/sales/{sale['id']}/schedule", headers=admin_headers())
    answers = [await _buy(client, sale["id"], "hammer", "same-key") for _ in range(100)]
    codes = [a.status_code for a in answers]
    assert codes.count(423) >= 1
    assert codes.count(429) >= 1, codes
    limited = next(a for a in answers if a.status_code == 429)
    assert limited.headers.get("retry-after") == "1"
    assert limited.json()["code"] == "RATE_LIMITED"


async def test_restock_beyond_the_maximum_is_refused(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=9_000_000)
    resp = await client.post(f"/admin/sales/{sale['id']}/stock", json={"units": 2_000_000}, headers=admin_headers())
    assert resp.status_code == 422
    assert resp.json()["code"] == "VALIDATION_ERROR"
    assert (await sale_stats(client, sale["id"]))["quantity"] == 9_000_000


@pytest.fixture
async def app_without_redis(settings: FlashSaleSettings) -> AsyncIterator[FastAPI]:
    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0", "replica_id": "no-redis"})
    application = create_app(broken)
    async with application.router.lifespan_context(application):
        yield application


async def test_redis_down_fails_closed_with_503_and_changes_nothing(
    client: httpx.AsyncClient, app_without_redis: FastAPI
) -> None:
    sale = await create_sale(client)
    transport = httpx.ASGITransport(app=app_without_redis)
    async with httpx.AsyncClient(transport=transport, base_url="http://no-redis") as broken:
        start = await broken.post(f"/admin/sales/{sale['id']}/start", headers=admin_headers())
        assert start.status_code == 503
        assert start.json()["code"] == "STOCK_UNAVAILABLE"
        buy = await broken.post(
            f"/sales/{sale['id']}/purchase", json={"quantity": 1}, headers=customer_headers("u", "k")
        )
        assert buy.status_code == 503
        assert buy.json()["code"] == "STOCK_UNAVAILABLE"
        # Degraded, not out: the sale list still serves from the catalog, so the replica stays in the pool.
        ready = await broken.get("/healthz/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"]["redis"].startswith("degraded")
    record = await client.get(f"/admin/sales/{sale['id']}", headers=admin_headers())
    assert record.json()["state"] == "draft"


def test_rate_limiter_charges_new_and_refused_keys_but_not_accepted_or_in_flight_ones() -> None:
    now = [0.0]
    limiter = UserRateLimiter(rate=1.0, burst=3, clock=lambda: now[0])
    assert [limiter.allow("u", f"k{n}") for n in range(4)] == [True, True, True, False]
    now[0] += 1.0  # one token back
    assert limiter.allow("u", "accepted")  # the token is taken here...
    limiter.begin("u", "accepted")
    assert limiter.allow("u", "accepted")  # ...not by a concurrent duplicate of an in-flight key
    limiter.begin("u", "accepted")
    limiter.end("u", "accepted", accepted=True)
    limiter.end("u", "accepted", accepted=True)
    assert all(limiter.allow("u", "accepted") for _ in range(10))  # replays of an accepted key are free
    now[0] += 1.0
    assert limiter.allow("u", "refused")
    limiter.begin("u", "refused")
    limiter.end("u", "refused", accepted=False)
    assert not limiter.allow("u", "refused")  # retrying a refusal pays, and no token is left
    assert limiter.allow("someone-else", "k")  # buckets are per user


async def test_redis_is_brought_back_to_the_recorded_state_when_an_admin_change_reached_one_side(
    client: httpx.AsyncClient, redis: Redis, database: str
) -> None:
    """A resume whose Redis write failed (record live, Redis paused) and a pause whose Redis write was lost
    (record paused, Redis live) are both put right by the settlement job, towards the record."""
    resumed = await live_sale(client, quantity=5)
    paused = await live_sale(client, quantity=5)
    assert (await client.post(f"/admin/sales/{paused['id']}/pause", headers=admin_headers())).status_code == 200
    await redis.hset(sale_key(resumed["id"]), "state", "paused")
    await redis.hset(sale_key(paused["id"]), "state", "live")
    dsn = make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:  # the admin change committed a while ago: not one still in flight
        await conn.execute("UPDATE sales SET updated_at = now() - interval '1 minute' WHERE id = $1", resumed["id"])
    finally:
        await conn.close()

    async def aligned() -> bool:
        states = [await redis.hget(sale_key(s["id"]), "state") for s in (resumed, paused)]
        return states == ["live", "paused"]

    await wait_for(aligned, timeout=15)
    assert (await _buy(client, resumed["id"], "align-1", "k")).status_code == 202
    refused = await _buy(client, paused["id"], "align-2", "k")
    assert refused.status_code == 423 and refused.json()["code"] == "SALE_NOT_LIVE"


@pytest.fixture
async def app_without_postgres(settings: FlashSaleSettings) -> AsyncIterator[FastAPI]:
    broken = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/flashsale", "replica_id": "no-pg"}
    )
    application = create_app(broken)
    async with application.router.lifespan_context(application):
        yield application


async def test_postgres_down_keeps_the_replica_ready_and_selling_and_admin_calls_get_503(
    client: httpx.AsyncClient, app_without_postgres: FastAPI
) -> None:
    """DESIGN: purchases keep being accepted while Redis is up. A gateway must not take the replica out."""
    sale = await live_sale(client, quantity=3)
    transport = httpx.ASGITransport(app=app_without_postgres)
    async with httpx.AsyncClient(transport=transport, base_url="http://no-pg") as broken:
        ready = await broken.get("/healthz/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["postgres"].startswith("degraded")
        assert ready.json()["checks"]["redis"] == "ok"
        buy = await broken.post(
            f"/sales/{sale['id']}/purchase", json={"quantity": 1}, headers=customer_headers("pg-down", "k")
        )
        assert buy.status_code == 202, buy.text
        admin = await broken.get(f"/admin/sales/{sale['id']}", headers=admin_headers())
        assert admin.status_code == 503, admin.text
        assert admin.json()["code"] == "DEPENDENCY_UNAVAILABLE"
        assert admin.headers["retry-after"] == "2"
    assert (await sale_stats(client, sale["id"]))["reserved"] == 1

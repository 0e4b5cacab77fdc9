"""A service whose database pool is exhausted says so with 503 and Retry-After, never a 500."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.migrate import upgrade
from services.inventory.config import InventorySettings
from services.inventory.main import create_app
from tests.conftest import TEST_REDIS_URL, admin_headers, db_name_for, db_url_for, drop_database

POOL_DB_URL = db_url_for("inventory_pool")


@pytest.fixture(scope="module")
async def small_pool_inventory(redis: Redis) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncEngine]]:
    """Inventory with a one-connection pool (plus one overflow) and a short wait for a free connection."""
    await drop_database(db_name_for("inventory_pool"))
    await asyncio.to_thread(upgrade, "inventory", POOL_DB_URL)
    settings = InventorySettings(
        env="test",
        database_url=POOL_DB_URL,
        redis_url=TEST_REDIS_URL,
        replica_id="inv-pool-test",
        db_pool_size=1,
        db_pool_timeout_seconds=0.3,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://inventory") as client:
            yield client, application.state.engine


async def test_a_request_that_finds_no_free_database_connection_gets_503_with_retry_after(
    small_pool_inventory: tuple[httpx.AsyncClient, AsyncEngine],
) -> None:
    client, engine = small_pool_inventory
    code = f"SKU-{os.urandom(4).hex()}"
    body = {"sku": code, "name": "Pool phone", "initial_stock": 5}
    created = await client.post("/admin/skus", json=body, headers=admin_headers())
    assert created.status_code == 201, created.text

    # Every pooled connection (pool 1 + overflow 1) is busy elsewhere.
    busy = [await engine.connect(), await engine.connect()]
    try:
        resp = await client.get(f"/admin/skus/{code}", headers=admin_headers())
    finally:
        for conn in busy:
            await conn.close()
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == "DEPENDENCY_UNAVAILABLE"
    assert resp.headers["retry-after"] == "2"

    # With the connections back, the same read answers again.
    again = await client.get(f"/admin/skus/{code}", headers=admin_headers())
    assert again.status_code == 200, again.text
    assert again.json()["on_hand"] == 5

"""The flashsale app with REDIS_URL at one node of a 3-master cluster: the purchase of sales on every master."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from services.common.migrate import upgrade
from services.flashsale.config import FlashSaleSettings
from services.flashsale.main import create_app
from services.flashsale.store import sale_key
from tests.cluster.conftest import LoopbackCluster
from tests.conftest import (
    admin_headers,
    create_sale,
    customer_headers,
    db_name_for,
    db_url_for,
    drop_database,
    wait_for,
)


@pytest.fixture(scope="module")
async def cluster_database() -> str:
    """A freshly migrated flashsale database for the app on the cluster (apart from the single-node app's)."""
    await drop_database(db_name_for("flashsale_on_cluster"))
    await asyncio.to_thread(upgrade, "flashsale", db_url_for("flashsale_on_cluster"))
    return db_url_for("flashsale_on_cluster")


@pytest.fixture
async def cluster_client(clean_cluster: LoopbackCluster, cluster_database: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the flashsale app (lifespan running) whose REDIS_URL names one node of the cluster."""
    settings = FlashSaleSettings(
        env="test",
        database_url=cluster_database,
        redis_url=clean_cluster.url,
        catalog_refresh_seconds=0.2,
        scheduler_interval_seconds=0.1,
        replica_id="cluster-inproc",
        redis_max_connections=32,
        redis_warm_connections=4,
    )
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://flashsale") as client:
            yield client


async def live_sales_on_each_master(
    client: httpx.AsyncClient, cluster: LoopbackCluster, quantity: int
) -> dict[int, int]:
    """Master index -> id of a live sale whose keys that master holds."""
    by_master: dict[int, int] = {}
    while len(by_master) < 3:
        sale = await create_sale(client, quantity=quantity, per_user_limit=2)
        by_master.setdefault(cluster.masters.index(cluster.master_of(sale_key(sale["id"]))), sale["id"])
    for sale_id in by_master.values():
        resp = await client.post(f"/admin/sales/{sale_id}/start", headers=admin_headers())
        assert resp.status_code == 200, resp.text
    return by_master


async def buy(client: httpx.AsyncClient, sale_id: int, user: str) -> httpx.Response:
    """One unit of the sale for `user`."""
    return await client.post(
        f"/sales/{sale_id}/purchase", json={"quantity": 1}, headers=customer_headers(user, f"{user}-{sale_id}")
    )


async def test_three_sales_on_three_masters_each_sell_exactly_their_stock(
    clean_cluster: LoopbackCluster, cluster_client: httpx.AsyncClient
) -> None:
    by_master = await live_sales_on_each_master(cluster_client, clean_cluster, quantity=20)

    async def attempt(sale_id: int, user: str) -> tuple[int, int]:
        return sale_id, (await buy(cluster_client, sale_id, user)).status_code

    # 50 buyers per sale, 20 units each, all three sales at once.
    results = await asyncio.gather(
        *(attempt(sale_id, f"buyer-{n}") for n in range(50) for sale_id in by_master.values())
    )
    accepted = Counter(sale_id for sale_id, status in results if status == 202)
    assert accepted == Counter(dict.fromkeys(by_master.values(), 20))
    assert {status for _sale, status in results} == {202, 409}
    for master, sale_id in by_master.items():
        with clean_cluster.masters[master].client() as conn:
            assert conn.hget(sale_key(sale_id), "remaining") == "0"


async def test_a_master_down_fails_only_its_sales_and_readiness_says_so(
    clean_cluster: LoopbackCluster, cluster_client: httpx.AsyncClient
) -> None:
    by_master = await live_sales_on_each_master(cluster_client, clean_cluster, quantity=10)
    assert (await cluster_client.get("/healthz/ready")).json()["checks"]["redis"] == "ok"
    down = clean_cluster.masters[1]  # not the node REDIS_URL names: a PING to that one still succeeds
    down.kill()
    try:
        refused = await buy(cluster_client, by_master[1], "shopper")
        assert (refused.status_code, refused.json()["code"]) == (503, "STOCK_UNAVAILABLE")
        assert [(await buy(cluster_client, by_master[n], "shopper")).status_code for n in (0, 2)] == [202, 202]
        ready = (await cluster_client.get("/healthz/ready")).json()
        # Flashsale serves its storefront without Redis: degraded (stays in the gateway's pool), not "ok".
        assert (ready["status"], ready["checks"]["redis"]) == ("degraded", "degraded: ConnectionError")
    finally:
        down.start()
        down.wait_answering()
        clean_cluster.wait_ok()

    async def redis_ready() -> bool:
        return bool((await cluster_client.get("/healthz/ready")).json()["checks"]["redis"] == "ok")

    await wait_for(redis_ready)

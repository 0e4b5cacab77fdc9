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
from tests.conftest import admin_headers, create_sale, customer_headers, db_name_for, db_url_for, drop_database


@pytest.fixture
async def cluster_client(clean_cluster: LoopbackCluster) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the flashsale app (lifespan running) whose Redis is the cluster, on a database of
    its own."""
    await drop_database(db_name_for("flashsale_on_cluster"))
    await asyncio.to_thread(upgrade, "flashsale", db_url_for("flashsale_on_cluster"))
    settings = FlashSaleSettings(
        env="test",
        database_url=db_url_for("flashsale_on_cluster"),
        redis_url=clean_cluster.url,
        catalog_refresh_seconds=0.2,
        scheduler_interval_seconds=0.1,
        replica_id="cluster-inproc",
    )
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://flashsale") as client:
            yield client


async def test_three_sales_on_three_masters_each_sell_exactly_their_stock(
    clean_cluster: LoopbackCluster, cluster_client: httpx.AsyncClient
) -> None:
    by_master: dict[int, int] = {}
    while len(by_master) < 3:
        sale = await create_sale(cluster_client, quantity=40, per_user_limit=2)
        master = clean_cluster.masters.index(clean_cluster.master_of(sale_key(sale["id"])))
        by_master.setdefault(master, sale["id"])
    for sale_id in by_master.values():
        resp = await cluster_client.post(f"/admin/sales/{sale_id}/start", headers=admin_headers())
        assert resp.status_code == 200, resp.text

    async def buy(sale_id: int, user: str) -> tuple[int, int]:
        resp = await cluster_client.post(
            f"/sales/{sale_id}/purchase", json={"quantity": 1}, headers=customer_headers(user, f"{user}-{sale_id}")
        )
        return sale_id, resp.status_code

    # 100 buyers per sale, 40 units each, all three sales at once.
    attempts = [buy(sale_id, f"buyer-{n}") for n in range(100) for sale_id in by_master.values()]
    results = await asyncio.gather(*attempts)
    accepted = Counter(sale_id for sale_id, status in results if status == 202)
    assert accepted == Counter(dict.fromkeys(by_master.values(), 40))
    assert {status for _sale, status in results} == {202, 409}
    for master, sale_id in by_master.items():
        with clean_cluster.masters[master].client() as conn:
            assert conn.hget(sale_key(sale_id), "remaining") == "0"

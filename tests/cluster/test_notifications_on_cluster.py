"""Flashsale replicas on a 3-master cluster hear each other over the sharded channel `{fs}:notify`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest

from services.common.migrate import upgrade
from services.flashsale.config import FlashSaleSettings
from services.flashsale.main import create_app
from tests.cluster.conftest import LoopbackCluster
from tests.conftest import db_name_for, db_url_for, drop_database, live_sale, wait_for


@pytest.fixture
async def two_replicas(clean_cluster: LoopbackCluster) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two flashsale apps on one database and the cluster; neither refreshes its catalog on its own for a minute."""
    await drop_database(db_name_for("flashsale_notify_on_cluster"))
    await asyncio.to_thread(upgrade, "flashsale", db_url_for("flashsale_notify_on_cluster"))
    async with AsyncExitStack() as stack:
        clients = []
        for name in ("notify-a", "notify-b"):
            app = create_app(
                FlashSaleSettings(
                    env="test",
                    database_url=db_url_for("flashsale_notify_on_cluster"),
                    redis_url=clean_cluster.url,
                    catalog_refresh_seconds=60,
                    replica_id=name,
                    redis_max_connections=16,
                )
            )
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            clients.append(
                await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://flashsale"))
            )
        yield clients[0], clients[1]


async def test_a_sale_started_on_one_replica_is_listed_by_the_other_at_once(
    two_replicas: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    first, second = two_replicas
    assert (await second.get("/sales")).json() == []
    sale = await live_sale(first, quantity=3)

    async def listed_by_second() -> bool:
        return any(view["id"] == sale["id"] for view in (await second.get("/sales")).json())

    # The second replica's own catalog refresh is a minute away: only the "catalog" notification can tell it.
    await wait_for(listed_by_second, timeout=5)

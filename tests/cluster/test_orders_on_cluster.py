"""Flashsale, order and coupon with REDIS_URL at one node of a 3-master cluster: purchase to paid order, the
order events relayed to `{orders}:events`, the job leases, and the Redis restart check of the right master."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from services.common.contracts import ORDER_EVENTS_STREAM, EventType, decode_event
from services.common.migrate import upgrade
from services.coupon.config import CouponSettings
from services.coupon.main import create_app as create_coupon
from services.coupon.store import RECOVERED_RUN_KEY
from services.flashsale.config import FlashSaleSettings
from services.flashsale.main import create_app as create_flashsale
from services.flashsale.store import job_lock_key
from services.order.config import OrderSettings
from services.order.main import create_app as create_order
from services.order.outbox import marker_key
from tests.cluster.conftest import ClusterNode, LoopbackCluster
from tests.conftest import (
    PaySims,
    customer_headers,
    db_name_for,
    db_url_for,
    drop_database,
    live_sale,
    sale_stats,
    wait_for,
)


@dataclass
class Stack:
    """The flashsale and order apps (lifespans running) on the cluster, with a client on each."""

    flashsale: FastAPI
    order: FastAPI
    shop: httpx.AsyncClient
    orders: httpx.AsyncClient


async def fresh_database(service: str, base: str) -> str:
    """A freshly migrated database of `service` for the apps on the cluster."""
    await drop_database(db_name_for(base))
    await asyncio.to_thread(upgrade, service, db_url_for(base))
    return db_url_for(base)


@pytest.fixture(scope="module")
async def databases() -> dict[str, str]:
    """Flashsale's, order's and coupon's databases, apart from the single-node apps'."""
    return {
        "flashsale": await fresh_database("flashsale", "flashsale_with_orders_on_cluster"),
        "order": await fresh_database("order", "orders_on_cluster"),
        "coupon": await fresh_database("coupon", "coupons_on_cluster"),
    }


@pytest.fixture
async def stack(clean_cluster: LoopbackCluster, databases: dict[str, str], paysim: PaySims) -> AsyncIterator[Stack]:
    """Flashsale and order in this process, both with REDIS_URL at the cluster's first node."""
    flashsale = create_flashsale(
        FlashSaleSettings(
            env="test",
            database_url=databases["flashsale"],
            redis_url=clean_cluster.url,
            catalog_refresh_seconds=0.2,
            scheduler_interval_seconds=0.1,
            replica_id="cluster-shop",
            redis_max_connections=32,
        )
    )
    order = create_order(
        OrderSettings(
            env="test",
            database_url=databases["order"],
            redis_url=clean_cluster.url,
            paysim_primary_url=paysim.primary,
            paysim_backup_url=paysim.backup,
            stream_discovery_seconds=0.1,
            replica_id="cluster-orders",
            redis_max_connections=32,
        )
    )
    async with flashsale.router.lifespan_context(flashsale), order.router.lifespan_context(order):
        shop_transport, order_transport = httpx.ASGITransport(app=flashsale), httpx.ASGITransport(app=order)
        async with (
            httpx.AsyncClient(transport=shop_transport, base_url="http://flashsale") as shop,
            httpx.AsyncClient(transport=order_transport, base_url="http://order") as orders,
        ):
            yield Stack(flashsale, order, shop, orders)


def run_id(node: ClusterNode) -> str:
    """The node's Redis run id (a new one after every restart)."""
    with node.client() as conn:
        return str(conn.info("server")["run_id"])


async def test_a_purchase_on_a_cluster_becomes_an_order_that_is_paid_and_the_sale_counts_it(
    clean_cluster: LoopbackCluster, stack: Stack
) -> None:
    sale = await live_sale(stack.shop, quantity=5, per_user_limit=2, price=1_500)
    bought = await stack.shop.post(
        f"/sales/{sale['id']}/purchase", json={"quantity": 2}, headers=customer_headers("dana", "dana-1")
    )
    assert bought.status_code == 202, bought.text
    rid = bought.json()["reservation_id"]
    assert (await sale_stats(stack.shop, sale["id"]))["reserved"] == 2
    found = await stack.orders.get(
        f"/orders/by-reservation/{rid}", params={"wait": 10}, headers=customer_headers("dana")
    )
    assert found.status_code == 200, found.text
    assert (found.json()["state"], found.json()["total"]) == ("pending_payment", 3_000)

    paid = await stack.orders.post(f"/orders/{found.json()['id']}/pay", headers=customer_headers("dana", "pay-1"))
    assert paid.status_code == 200, paid.text
    assert paid.json()["state"] == "paid"

    async def counted_paid() -> bool:
        # Flashsale learns of the payment only from the order events stream on the cluster.
        stats = await sale_stats(stack.shop, sale["id"])
        return (stats["reserved"], stats["sold"]) == (0, 2)

    await wait_for(counted_paid)
    home = clean_cluster.master_of(ORDER_EVENTS_STREAM)
    with home.client() as conn:
        events = [decode_event(fields) for _id, fields in conn.xrange(ORDER_EVENTS_STREAM)]
        marker = conn.get(marker_key(ORDER_EVENTS_STREAM))
    assert [e["type"] for e in events if e.get("reservation_id") == rid] == [
        EventType.ORDER_CREATED,
        EventType.ORDER_PAID,
    ]
    # The relay remembers the run of the master holding the stream, not of the node REDIS_URL names.
    assert marker == run_id(home)


async def test_settlement_and_reconciliation_leases_hold_on_a_cluster(
    clean_cluster: LoopbackCluster, stack: Stack
) -> None:
    reconciler = stack.flashsale.state.reconciler
    me = stack.flashsale.state.service.core.settings.consumer_name
    home = clean_cluster.master_of(job_lock_key("settle"))
    with home.client() as conn:
        conn.set(job_lock_key("settle"), "another-replica", px=30_000)
        conn.delete(job_lock_key("reconcile"))
    assert await reconciler.settle() == 0  # the other replica holds this tick
    await reconciler.reconcile_periodically()
    with home.client() as conn:
        assert conn.get(job_lock_key("settle")) == "another-replica"
        assert conn.get(job_lock_key("reconcile")) == me
        assert conn.pttl(job_lock_key("reconcile")) > 0


@pytest.fixture
async def coupon_app(clean_cluster: LoopbackCluster, databases: dict[str, str]) -> AsyncIterator[FastAPI]:
    """The coupon service in this process on the cluster, checking for a Redis restart every 0.1 s."""
    app = create_coupon(
        CouponSettings(
            env="test",
            database_url=databases["coupon"],
            redis_url=clean_cluster.url,
            replica_id="cluster-coupons",
            restore_interval_seconds=0.1,
            redis_max_connections=16,
        )
    )
    async with app.router.lifespan_context(app):
        yield app


async def test_coupon_recovery_follows_the_run_of_the_master_holding_its_keys(
    clean_cluster: LoopbackCluster, coupon_app: FastAPI
) -> None:
    home = clean_cluster.master_of(RECOVERED_RUN_KEY)
    assert home is not clean_cluster.masters[0]  # the node REDIS_URL names would be the wrong one to ask

    def recovered_run() -> str | None:
        with home.client() as conn:
            value = conn.get(RECOVERED_RUN_KEY)
        return None if value is None else str(value)

    async def checked_against(run: str) -> bool:
        return recovered_run() == run

    await wait_for(lambda: checked_against(run_id(home)))
    home.kill()  # it comes back empty, as a master that lost its data
    home.start()
    home.wait_answering()
    clean_cluster.wait_ok()
    restarted = run_id(home)
    await wait_for(lambda: checked_against(restarted), timeout=20)


async def test_a_master_down_leaves_order_and_coupon_in_the_pool_with_redis_degraded(
    clean_cluster: LoopbackCluster, stack: Stack, coupon_app: FastAPI
) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=coupon_app), base_url="http://coupon") as coupons:
        clients = {"flashsale": stack.shop, "order": stack.orders, "coupon": coupons}
        for client in clients.values():
            assert (await client.get("/healthz/ready")).json()["checks"]["redis"] == "ok"
        down = clean_cluster.masters[1]  # not the node REDIS_URL names: a PING to that one still succeeds
        down.kill()
        try:
            for name, client in clients.items():
                ready = await client.get("/healthz/ready")
                assert ready.status_code == 200, (name, ready.text)  # still in the gateway's pool
                assert ready.json()["status"] == "degraded", name
                assert ready.json()["checks"]["redis"].startswith("degraded: "), name
            # The order views are PostgreSQL: they answer as on a single Redis that is down.
            assert (await stack.orders.get("/orders", headers=customer_headers("erin"))).status_code == 200
        finally:
            down.start()
            down.wait_answering()
            clean_cluster.wait_ok()

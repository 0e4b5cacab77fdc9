"""Purchases that wait for a replica (FLASHSALE_PURCHASE_WAIT_REPLICAS): on 3 masters with a replica each, a
purchase is answered only once its master's replica has it; a replica that does not confirm in time turns
the answer into "outcome unknown, retry with the same key" (the unit stays reserved); and SIGKILL of a master
mid-sale loses no purchase that was answered 202."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi import FastAPI

from services.common.cluster_script_pipe import ClusterScriptPipe
from services.common.migrate import upgrade
from services.common.script_pipe import ReplicaWaitTimeout
from services.flashsale.config import FlashSaleSettings
from services.flashsale.main import create_app
from services.flashsale.store import reservations_key, sale_key
from tests.cluster.conftest import ClusterNode, LoopbackCluster
from tests.conftest import admin_headers, create_sale, customer_headers, db_name_for, db_url_for, drop_database

INCR = "return redis.call('INCR', KEYS[1])"


def replica_of(cluster: LoopbackCluster, master: ClusterNode) -> ClusterNode:
    """The node that replicates `master` now."""
    for node in cluster.nodes:
        if node is master or node.proc is None:
            continue
        with node.client() as conn:
            info = conn.info("replication")
        if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
            return node
    raise LookupError(f"no replica of {master.port}")


@contextmanager
def stopped(node: ClusterNode) -> Iterator[None]:
    """SIGSTOP a node (it keeps its connections but answers nothing), SIGCONT it afterwards."""
    assert node.proc is not None
    node.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        node.proc.send_signal(signal.SIGCONT)


async def test_a_call_is_answered_once_the_replica_has_it_and_unknown_when_it_does_not_confirm(
    replicated_cluster: LoopbackCluster,
) -> None:
    key = replicated_cluster.keys_on_each_master("wait:")[0]
    master = replicated_cluster.master_of(key)
    waiting = ClusterScriptPipe(
        replicated_cluster.url,
        INCR,
        call_timeout=2,
        connect_timeout=1,
        decode=True,
        wait_replicas=1,
        wait_timeout_ms=150,
    )
    plain = ClusterScriptPipe(replicated_cluster.url, INCR, call_timeout=2, connect_timeout=1, decode=True)
    try:
        assert sorted(await asyncio.gather(*(waiting.evalsha([key], []) for _ in range(50)))) == list(range(1, 51))
        replica = replica_of(replicated_cluster, master)
        with stopped(replica):
            with pytest.raises(ReplicaWaitTimeout):
                await waiting.evalsha([key], [])
            assert await plain.evalsha([key], []) == 52  # without the wait: answered, the replica behind
            with master.client() as conn:
                assert conn.get(key) == "52"  # the unconfirmed call did run: its outcome was unknown, not undone
        # The replica catches up and confirms again.
        assert await waiting.evalsha([key], []) == 53
    finally:
        await waiting.aclose()
        await plain.aclose()


@pytest.fixture(scope="module")
async def wait_database() -> str:
    await drop_database(db_name_for("flashsale_wait"))
    await asyncio.to_thread(upgrade, "flashsale", db_url_for("flashsale_wait"))
    return db_url_for("flashsale_wait")


@pytest.fixture
async def waiting_client(replicated_cluster: LoopbackCluster, wait_database: str) -> AsyncIterator[httpx.AsyncClient]:
    """The flashsale app on the replicated cluster, purchases waiting for one replica."""
    settings = FlashSaleSettings(
        env="test",
        database_url=wait_database,
        redis_url=replicated_cluster.url,
        redis_cluster="yes",
        catalog_refresh_seconds=0.2,
        scheduler_interval_seconds=0.1,
        replica_id="wait-inproc",
        redis_max_connections=32,
        purchase_wait_replicas=1,
        purchase_wait_timeout_ms=150,
    )
    app: FastAPI = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://fs") as client:
        yield client


async def _live_sale(client: httpx.AsyncClient, quantity: int) -> int:
    sale = await create_sale(client, quantity=quantity, per_user_limit=1)
    assert (await client.post(f"/admin/sales/{sale['id']}/start", headers=admin_headers())).status_code == 200
    return int(sale["id"])


async def _buy(client: httpx.AsyncClient, sale_id: int, user: str) -> httpx.Response:
    return await client.post(
        f"/sales/{sale_id}/purchase", json={"quantity": 1}, headers=customer_headers(user, f"{user}-key")
    )


async def test_an_unconfirmed_purchase_answers_retry_and_its_retry_gets_the_reservation(
    replicated_cluster: LoopbackCluster, waiting_client: httpx.AsyncClient
) -> None:
    sale_id = await _live_sale(waiting_client, quantity=5)
    master = replicated_cluster.master_of(sale_key(sale_id))
    assert (await _buy(waiting_client, sale_id, "confirmed")).status_code == 202
    with stopped(replica_of(replicated_cluster, master)):
        unknown = await _buy(waiting_client, sale_id, "unconfirmed")
        assert unknown.status_code == 503 and unknown.json()["code"] == "STOCK_UNAVAILABLE"
        assert unknown.headers["retry-after"]
    with master.client() as conn:
        assert conn.hget(sale_key(sale_id), "remaining") == "3"  # the unit stays reserved, never given back
    retried = await _buy(waiting_client, sale_id, "unconfirmed")
    assert retried.status_code == 202, retried.text
    with master.client() as conn:
        assert set(conn.hkeys(reservations_key(sale_id))) >= {retried.json()["reservation_id"]}
        assert conn.hget(sale_key(sale_id), "remaining") == "3"


async def test_sigkill_of_a_master_mid_sale_loses_no_purchase_answered_202(
    replicated_cluster: LoopbackCluster, waiting_client: httpx.AsyncClient
) -> None:
    quantity = 400
    sale_id = await _live_sale(waiting_client, quantity=quantity)
    master = replicated_cluster.master_of(sale_key(sale_id))
    accepted: list[str] = []
    killed = asyncio.Event()
    after_kill = 0

    async def shopper(n: int) -> None:
        nonlocal after_kill
        for k in range(quantity):
            user = f"s{n}-{k}"
            while True:  # a shopper retries an unanswered purchase with the same key, as the API says
                resp = await _buy(waiting_client, sale_id, user)
                if resp.status_code == 202:
                    accepted.append(resp.json()["reservation_id"])
                    after_kill += killed.is_set()
                    break
                assert resp.status_code in (429, 503), resp.text
                await asyncio.sleep(0.05)
            if after_kill >= 40 or len(accepted) >= quantity - 10:
                return

    shoppers = [asyncio.create_task(shopper(n)) for n in range(8)]
    while len(accepted) < 60:
        await asyncio.sleep(0.01)
    master.kill()
    killed.set()
    # Its replica takes over; the old master comes back as the new one's replica, which purchases wait for.
    await asyncio.to_thread(
        replicated_cluster.wait_until,
        lambda: replicated_cluster.master_of(sale_key(sale_id)) is not master,
        "the replica to take over",
    )
    master.start()
    await asyncio.wait_for(asyncio.gather(*shoppers), timeout=60)
    promoted = replicated_cluster.master_of(sale_key(sale_id))
    assert promoted is not master
    with promoted.client() as conn:
        held = set(conn.hkeys(reservations_key(sale_id)))
        remaining = int(conn.hget(sale_key(sale_id), "remaining") or 0)
    assert set(accepted) <= held, f"{len(set(accepted) - held)} purchases answered 202 were lost with the master"
    assert len(set(accepted)) == len(accepted)
    assert remaining + len(held) == quantity  # nothing oversold: every unit is remaining or reserved once

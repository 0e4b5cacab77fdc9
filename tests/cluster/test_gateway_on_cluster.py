"""The gateway with REDIS_URL at one node of a 3-master cluster: its limiter limits, its views are shared."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis
from redis.crc import key_slot

from gateway.ratelimit import LimitClass, RateLimiter, bucket_key
from tests.cluster.conftest import LoopbackCluster
from tests.conftest import admin_headers, wait_for
from tests.gateway.conftest import Gateway, Upstream, gateway_settings, serve, shutdown


@pytest.fixture
async def gateways(clean_cluster: LoopbackCluster) -> AsyncIterator[Any]:
    """Start gateways on the cluster (stopped after the test): `await gateways(**settings_overrides)`."""
    started: list[Gateway] = []

    async def start(**overrides: Any) -> Gateway:
        gateway = Gateway(gateway_settings(redis_url=clean_cluster.url, **overrides))
        gateway.server = await serve(gateway.app, gateway.port)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.server is not None:
            await shutdown(gateway.server)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """One tiny upstream answering 200."""
    server = await Upstream("inventory").start()
    yield server
    await server.stop()


def script_stats(conn: SyncRedis) -> tuple[int, int, int]:
    """(EVALSHA calls, failed EVALSHA calls, reads of client input) the node has served so far; asking costs
    the node one read (one command on a connection already open)."""
    info = conn.info("commandstats", "stats")
    stats = info.get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("failed_calls", 0)), int(info["total_reads_processed"])


async def test_the_limiter_on_a_cluster_answers_429_once_the_address_burst_is_spent(
    gateways: Any, upstream: Upstream
) -> None:
    gateway = await gateways(inventory_urls=upstream.url, ip_rate=0.001, ip_burst=5)
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        statuses = [(await client.get("/api/inventory/skus/SKU-1/availability")).status_code for _ in range(7)]
        refused = await client.get("/api/inventory/skus/SKU-1/availability")
    # Failing open (CROSSSLOT, MOVED) would let all of them through.
    assert statuses == [200] * 5 + [429] * 2
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert upstream.total == 5


async def test_a_batch_on_a_cluster_is_one_call_per_slot_and_one_write_per_master(
    clean_cluster: LoopbackCluster,
) -> None:
    limiter = RateLimiter(gateway_settings(redis_url=clean_cluster.url))
    users = [f"shopper-{n}-{uuid.uuid4().hex[:6]}" for n in range(30)]
    ips = [f"10.7.{n}.1" for n in range(10)]

    async def batch(who: list[str]) -> list[int]:
        return await asyncio.gather(
            *(limiter.check(u, ips[n % len(ips)], LimitClass.SHOPPING) for n, u in enumerate(who))
        )

    conns = [node.client() for node in clean_cluster.masters]
    try:
        for conn in conns:
            conn.ping()  # connected before counting
        # A first batch learns the slot map, connects to every master and loads the script there.
        assert await batch([f"early-{n}" for n in range(30)]) == [0] * 30
        before = [script_stats(conn) for conn in conns]
        waits = await batch(users)
        after = [script_stats(conn) for conn in conns]
    finally:
        await limiter.aclose()
        for conn in conns:
            conn.close()
    assert waits == [0] * len(users)
    keys = [bucket_key(LimitClass.SHOPPING, "u", u) for u in users] + [
        bucket_key(LimitClass.SHOPPING, "ip", ip) for ip in ips
    ]
    slots_on = [
        {key_slot(k.encode()) for k in keys if clean_cluster.master_of(k) is node} for node in clean_cluster.masters
    ]
    for node_slots, (calls0, failed0, reads0), (calls1, failed1, reads1) in zip(slots_on, before, after, strict=True):
        assert node_slots  # the batch reached every master
        assert calls1 - calls0 == len(node_slots)  # one call per slot, not per request
        assert failed1 == failed0  # no CROSSSLOT
        # The batch's calls to this master arrived in one write: one read on the node, and one for asking.
        assert reads1 - reads0 == 2


async def test_a_request_refused_on_its_user_s_slot_gives_back_its_address_token(
    clean_cluster: LoopbackCluster,
) -> None:
    limiter = RateLimiter(
        gateway_settings(redis_url=clean_cluster.url, user_rate=0.001, user_burst=1, ip_rate=0.001, ip_burst=3)
    )
    ip = "10.8.0.1"
    alice = next(
        user
        for user in (f"alice-{n}" for n in range(100))
        if key_slot(bucket_key(LimitClass.SHOPPING, "u", user).encode())
        != key_slot(bucket_key(LimitClass.SHOPPING, "ip", ip).encode())
    )
    try:
        assert await limiter.check(alice, ip, LimitClass.SHOPPING) == 0
        # Alice's bucket is empty: refused, and the address's token her call took comes back.
        for _ in range(5):
            assert await limiter.check(alice, ip, LimitClass.SHOPPING) >= 1
        await asyncio.sleep(0)  # the give-back goes with the next batch
        others = [await limiter.check(f"bob-{n}", ip, LimitClass.SHOPPING) for n in range(3)]
    finally:
        await limiter.aclose()
    # The address spent one token on alice's one pass: two more pass, the third is refused.
    assert [w == 0 for w in others] == [True, True, False]


async def test_admin_upstreams_on_a_cluster_lists_every_worker_s_view(gateways: Any) -> None:
    first, second = await gateways(view_interval_seconds=0.2), await gateways(view_interval_seconds=0.2)
    workers = {first.app.api.state.worker, second.app.api.state.worker}
    async with httpx.AsyncClient() as client:

        async def both_seen() -> dict[str, Any] | None:
            resp = await client.get(f"{second.url}/admin/upstreams", headers=admin_headers())
            assert resp.status_code == 200, resp.text
            body: dict[str, Any] = resp.json()
            return body if {w["worker"] for w in body["workers"]} == workers else None

        view = await wait_for(both_seen, timeout=5)
    assert view["workers_error"] is None
    for worker in view["workers"]:
        assert {pool["pool"] for pool in worker["pools"]} == {"inventory", "flashsale", "coupon", "order"}

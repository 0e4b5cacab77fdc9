"""Failover with real flashsale replicas: SIGKILL one mid-sale, bring it back, lose every primary."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx

from tests.conftest import admin_headers, free_port, live_sale, sale_stats, token, wait_for
from tests.gateway.conftest import FlashsaleReplicas

PURCHASES = 2_000
USERS = 400
CONCURRENCY = 32
KILL_AFTER = 500


async def _true(value: bool) -> bool:
    return value


async def test_sigkill_a_replica_mid_sale_then_restart_then_lose_every_primary(
    start_gateway: Any, flashsale_replicas: FlashsaleReplicas
) -> None:
    a, b, backup = flashsale_replicas.start(*(free_port() for _ in range(3)))
    gw = await start_gateway(flashsale_urls=f"{a},{b}", flashsale_backup_urls=backup, purchase_timeout=3.0)
    pool = gw.pools["flashsale"]
    replica_a, replica_b = pool.primaries
    (replica_backup,) = pool.backups
    tokens = [token(f"gw-buyer-{n}", ["customer"]) for n in range(USERS)]
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=f"{gw.url}/api/flashsale", limits=limits, timeout=10) as client:
        sale = await live_sale(client, quantity=100_000, per_user_limit=10)
        sale_id = sale["id"]
        for url in (a, b, backup):  # every replica knows the sale before the crowd arrives
            await wait_for(lambda url=url: _knows(client, url, sale_id))

        answers: dict[str, httpx.Response | Exception] = {}
        done = 0
        killed_at = 0

        async def buy(n: int) -> None:
            nonlocal done, killed_at
            key = f"gw-kill-{sale_id}-{n}"
            headers = {"Authorization": f"Bearer {tokens[n % USERS]}", "Idempotency-Key": key}
            try:
                answers[key] = await client.post(f"/sales/{sale_id}/purchase", json={"quantity": 1}, headers=headers)
            except httpx.HTTPError as exc:
                answers[key] = exc
            done += 1
            if done == KILL_AFTER:
                flashsale_replicas.kill(a)  # SIGKILL: no graceful shutdown, in-flight requests are cut
                killed_at = done

        queue = iter(range(PURCHASES))

        async def worker() -> None:
            for n in queue:
                await buy(n)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        assert killed_at == KILL_AFTER
        statuses = Counter(
            r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in answers.values()
        )
        failed = [k for k, r in answers.items() if not (isinstance(r, httpx.Response) and r.status_code == 202)]
        assert len(failed) < PURCHASES // 100, f"{len(failed)} of {PURCHASES} failed: {statuses}"
        assert replica_a.ejections >= 1 or not replica_a.healthy
        print(f"SIGKILL mid-sale: {len(failed)} of {PURCHASES} purchases failed, answers {dict(statuses)}")

        # A client retries a failed purchase with its key; then every purchase has exactly one reservation.
        for key in failed:
            headers = {"Authorization": f"Bearer {tokens[int(key.rsplit('-', 1)[1]) % USERS]}", "Idempotency-Key": key}
            answers[key] = await client.post(f"/sales/{sale_id}/purchase", json={"quantity": 1}, headers=headers)
        reservations = {k: r.json()["reservation_id"] for k, r in answers.items() if isinstance(r, httpx.Response)}
        assert all(isinstance(r, httpx.Response) and r.status_code == 202 for r in answers.values())
        assert len(set(reservations.values())) == len(answers) == PURCHASES
        stats = await sale_stats(client, sale_id)
        assert stats["reserved"] == PURCHASES, f"units sold {stats['reserved']} != distinct purchases {PURCHASES}"

        # Restarted on the same address, it is back in the pool.
        flashsale_replicas.start(_port(a))
        await wait_for(lambda: _true(replica_a.available(time.monotonic())), timeout=15)
        served_before = replica_a.served
        for _ in range(10):
            assert (await client.get(f"/sales/{sale_id}")).status_code == 200
        assert replica_a.served > served_before
        view = (await client.get(f"{gw.url}/admin/upstreams", headers=admin_headers())).json()
        flashsale = next(p for p in view["pools"] if p["pool"] == "flashsale")
        assert flashsale["replicas"][0]["healthy"] and not flashsale["replicas"][0]["ejected"]

        # Every primary down: the backup answers.
        flashsale_replicas.kill(a)
        flashsale_replicas.kill(b)
        await wait_for(lambda: _true(not replica_a.healthy and not replica_b.healthy), timeout=5)
        backup_before = replica_backup.served
        for n in range(10):
            headers = {"Authorization": f"Bearer {tokens[n]}", "Idempotency-Key": f"gw-backup-{sale_id}-{n}"}
            resp = await client.post(f"/sales/{sale_id}/purchase", json={"quantity": 1}, headers=headers)
            assert resp.status_code == 202, resp.text
        assert replica_backup.served - backup_before == 10
        assert (await sale_stats(client, sale_id))["reserved"] == PURCHASES + 10


async def _knows(client: httpx.AsyncClient, url: str, sale_id: int) -> bool:
    resp = await client.get(f"{url}/sales/{sale_id}")
    return resp.status_code == 200 and resp.json().get("state") == "live"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])

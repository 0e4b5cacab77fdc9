"""Order creation survives a consumer killed with SIGKILL and PostgreSQL going away mid-sale."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from deploy.backends import find_postgres_bin, postgres_answers
from services.common.contracts import PURCHASE_STREAM_REGISTRY, purchase_stream
from services.common.migrate import upgrade
from services.flashsale.config import FlashSaleSettings
from services.flashsale.main import create_app as create_flashsale
from services.order.config import OrderSettings
from services.order.main import create_app as create_order
from tests.conftest import (
    Processes,
    admin_headers,
    customer_headers,
    db_name_for,
    db_url_for,
    drop_database,
    free_port,
    redis_url_for,
    sale_body,
    wait_for,
)


async def _count_orders(db_url: str) -> tuple[int, int]:
    dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT count(*), count(DISTINCT reservation_id) FROM orders")
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


async def test_consumer_killed_mid_stream_still_makes_exactly_one_order_per_event() -> None:
    db_url = db_url_for("orders_crash")
    await drop_database(db_name_for("orders_crash"))
    await asyncio.to_thread(upgrade, "order", db_url)
    redis = Redis.from_url(redis_url_for(1), decode_responses=True)
    await redis.flushdb()
    stream = purchase_stream(424242)
    await redis.sadd(PURCHASE_STREAM_REGISTRY, stream)
    env = {
        "REDIS_URL": redis_url_for(1),
        "ORDER_DATABASE_URL": db_url,
        "REPLICA_ID": "order-crash",
        "ORDER_CONSUMER_BATCH": "25",
        "ORDER_STREAM_DISCOVERY_SECONDS": "0.1",
        "ORDER_CONSUMER_CLAIM_IDLE_MS": "2000",
    }
    total = 2000

    async def produce() -> None:
        for start in range(0, total, 50):
            async with redis.pipeline(transaction=False) as pipe:
                for n in range(start, start + 50):
                    data = {
                        "reservation_id": f"crash-{n:05d}",
                        "sale_id": 424242,
                        "user_id": f"u{n}",
                        "sku": "SKU-CRASH",
                        "quantity": 1,
                        "unit_price": 500,
                        "currency": "USD",
                    }
                    pipe.xadd(stream, {"type": "purchase.reserved", "v": "1", "data": orjson.dumps(data).decode()})
                await pipe.execute()
            await asyncio.sleep(0.02)

    procs = Processes()
    try:
        procs.start("services.order.main:app", env)
        producer = asyncio.create_task(produce())
        await wait_for(lambda: _at_least(db_url, 400), timeout=30, interval=0.01)
        procs.procs[-1].send_signal(signal.SIGKILL)
        procs.procs[-1].wait(timeout=10)
        at_kill, _ = await _count_orders(db_url)
        await producer
        assert at_kill < total  # it really died in the middle
        procs.start("services.order.main:app", env)  # the same consumer name comes back
        await wait_for(lambda: _at_least(db_url, total), timeout=60, interval=0.1)
        await asyncio.sleep(1)  # anything duplicated would show up by now
        assert await _count_orders(db_url) == (total, total)
        assert (await redis.xpending(stream, "order"))["pending"] == 0
    finally:
        procs.stop_all()
        await redis.aclose()


async def _at_least(db_url: str, n: int) -> bool:
    return (await _count_orders(db_url))[0] >= n


class PrivatePostgres:
    """A PostgreSQL server of the test's own, so that the test can stop and start it."""

    def __init__(self) -> None:
        self.bin_dir = find_postgres_bin(False)
        self.base = Path(tempfile.mkdtemp(prefix="fs-pgtest-"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-locale"],
            check=True,
            capture_output=True,
            user=self.user,
            cwd=self.base,
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        cmd = [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        cmd += ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="]
        self.proc = subprocess.Popen(cmd, user=self.user, cwd=self.base, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not postgres_answers(self.url):
            assert time.monotonic() < deadline, "private PostgreSQL did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: open connections are cut
            self.proc.wait(timeout=30)
            self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    pg.start()
    yield pg
    pg.remove()


@pytest.fixture(scope="module")
async def outage_stack(private_pg: PrivatePostgres) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """flashsale and order in-process on the private PostgreSQL and a Redis database of their own."""
    server = make_url(private_pg.url)
    fs_db = server.set(database="flashsale").render_as_string(hide_password=False)
    order_db = server.set(database="orders").render_as_string(hide_password=False)
    await asyncio.to_thread(upgrade, "flashsale", fs_db)
    await asyncio.to_thread(upgrade, "order", order_db)
    redis = Redis.from_url(redis_url_for(2), decode_responses=True)
    await redis.flushdb()
    await redis.aclose()
    flashsale: FastAPI = create_flashsale(
        FlashSaleSettings(env="test", database_url=fs_db, redis_url=redis_url_for(2), replica_id="outage-fs")
    )
    order: FastAPI = create_order(
        OrderSettings(
            env="test",
            database_url=order_db,
            redis_url=redis_url_for(2),
            replica_id="outage-order",
            stream_discovery_seconds=0.2,
        )
    )
    async with flashsale.router.lifespan_context(flashsale), order.router.lifespan_context(order):
        transport = httpx.ASGITransport(app=flashsale)
        async with httpx.AsyncClient(transport=transport, base_url="http://flashsale") as client:
            yield client, order_db


async def test_postgres_down_for_20s_purchases_go_on_and_every_reservation_gets_its_order(
    private_pg: PrivatePostgres, outage_stack: tuple[httpx.AsyncClient, str]
) -> None:
    client, order_db = outage_stack
    created = await client.post("/admin/sales", json=sale_body(quantity=1000), headers=admin_headers())
    sale_id = created.json()["id"]
    assert (await client.post(f"/admin/sales/{sale_id}/start", headers=admin_headers())).status_code == 200
    accepted: list[str] = []
    statuses: list[int] = []

    async def buyers(seconds: float) -> None:
        end = time.monotonic() + seconds
        n = len(statuses)
        while time.monotonic() < end:
            resp = await client.post(
                f"/sales/{sale_id}/purchase", json={"quantity": 1}, headers=customer_headers(f"pg-{n}", "k")
            )
            statuses.append(resp.status_code)
            if resp.status_code == 202:
                accepted.append(resp.json()["reservation_id"])
            n += 1
            await asyncio.sleep(0.05)

    await buyers(2)
    before_outage = len(accepted)
    await asyncio.to_thread(private_pg.stop)
    try:
        await buyers(20)
    finally:
        await asyncio.to_thread(private_pg.start)
    during_outage = len(accepted) - before_outage
    assert set(statuses) == {202}
    assert during_outage > 100

    async def all_orders() -> bool:
        try:
            count, distinct = await _count_orders(order_db)
        except (OSError, asyncpg.PostgresError):
            return False
        return count == distinct == len(accepted)

    await wait_for(all_orders, timeout=60, interval=0.5)

"""Order creation throughput from a pre-filled purchase stream (`make bench-orders`).

Fills one sale's purchase stream with N synthetic purchase events (the shape flashsale's Lua script
writes), then lets the order service's own consumer (consumer group, batched inserts, outbox rows in the
same transaction) turn them into orders in a fresh database, and reports orders/s. It then checks that
every event became exactly one order. Uses REDIS_URL (logical DB 6, flushed) and DATABASE_URL (database
`orders_bench`, recreated). `make bench-orders` runs `.venv/bin/python -m loadtest.bench.orders`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson
from sqlalchemy import text

from loadtest.bench.backends import recreate_database, urls_from_environment
from loadtest.bench.errors import BenchError
from services.common.resources import RedisClient, open_engine, open_redis, session_factory
from services.order.config import OrderSettings
from services.order.events import PurchaseIngest
from services.order.payments import PaymentRouter
from services.order.service import OrderService

REDIS_DB = 6  # the logical Redis DB of the run, flushed
SALE_ID = 990_001
STREAM = f"{{fs:{SALE_ID}}}:events"


async def fill(redis: RedisClient, events: int) -> None:
    """XADD `events` purchase events, pipelined."""
    batch = 5_000
    for start in range(0, events, batch):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(events, start + batch)):
                data = {
                    "reservation_id": f"bench-{n:08d}",
                    "sale_id": SALE_ID,
                    "user_id": f"user-{n % 20_000}",
                    "sku": "SKU-BENCH",
                    "quantity": 1,
                    "unit_price": 9_900,
                    "currency": "USD",
                    "reserved_at": "2026-11-25T12:00:00+00:00",
                }
                pipe.xadd(STREAM, {"type": "purchase.reserved", "v": "1", "data": orjson.dumps(data).decode()})
            await pipe.execute()


async def run(events: int, batch: int, *, redis_url: str, db_url: str) -> int:
    """Fill, consume, verify; returns the exit code."""
    settings = OrderSettings(env="dev", database_url=db_url, redis_url=redis_url, consumer_batch=batch)
    redis = open_redis(settings)
    await redis.flushdb()
    print(f"filling {STREAM} with {events:,} purchase events ...")
    await fill(redis, events)
    engine = open_engine(settings)
    payments = PaymentRouter(primary_url="http://127.0.0.1:9", backup_url="http://127.0.0.1:9")
    service = OrderService(settings=settings, redis=redis, sessions=session_factory(engine), payments=payments)
    consumer = PurchaseIngest(service, "bench-1").consumer_for(STREAM)
    await consumer.ensure_group()
    started = time.perf_counter()
    handled = 0
    while handled < events and time.perf_counter() - started < 600:
        handled += await consumer.read_once()
    elapsed = time.perf_counter() - started
    async with engine.connect() as c:
        orders = (await c.execute(text("SELECT count(*), count(DISTINCT reservation_id) FROM orders"))).one()
        outbox = (await c.execute(text("SELECT count(*) FROM outbox"))).scalar_one()
    pending = (await redis.xpending(STREAM, "order"))["pending"]
    await payments.aclose()
    await redis.aclose()
    await engine.dispose()
    rate = handled / elapsed
    print(f"batch size {batch}: {handled:,} events -> {orders[0]:,} orders in {elapsed:.2f}s = {rate:,.0f} orders/s")
    print(f"distinct reservations {orders[1]:,}, outbox rows {outbox:,}, still pending in the group {pending}")
    ok = orders[0] == orders[1] == events == outbox and pending == 0
    print(
        f"every event exactly one order: {'yes' if ok else 'NO'}; aim >= 5,000 orders/s: "
        f"{'PASS' if rate >= 5_000 else 'MISS'}"
    )
    return 0 if ok else 1


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    try:
        redis_url, db_url = urls_from_environment(REDIS_DB, "orders_bench")
        recreate_database(db_url, service="order")
    except BenchError as exc:
        print(f"bench orders: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(run(args.events, args.batch, redis_url=redis_url, db_url=db_url))


if __name__ == "__main__":
    raise SystemExit(main())

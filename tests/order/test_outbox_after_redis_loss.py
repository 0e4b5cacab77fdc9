"""Order events the relay published just before Redis lost them are published again: real Redis (the suite's
and one the test restarts itself), real PostgreSQL, the order service's own code in the test process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from services.common.contracts import decode_event
from services.common.migrate import upgrade
from services.order.config import OrderSettings
from services.order.outbox import marker_key
from services.order.service import OrderService
from tests.conftest import TEST_REDIS_URL, PrivateRedis, db_name_for, db_url_for, drop_database
from tests.order.conftest import order_service

DB_BASE = "orders_relay"


@pytest.fixture
def order_db() -> str:
    """A freshly migrated order database for each test: its outbox holds only that test's events."""
    asyncio.run(drop_database(db_name_for(DB_BASE)))
    upgrade("order", db_url_for(DB_BASE))
    return db_url_for(DB_BASE)


@pytest.fixture
def aof_redis() -> Iterator[PrivateRedis]:
    """A private persistent Redis, killed at the end."""
    server = PrivateRedis(aof=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _settings(db_url: str, redis_url: str) -> OrderSettings:
    return OrderSettings(
        env="test",
        database_url=db_url,
        redis_url=redis_url,
        db_pool_size=2,
        purchase_stream_registry=f"test:relay:{uuid.uuid4().hex[:8]}:no-streams",
        events_stream=f"test:relay:{uuid.uuid4().hex[:8]}:order-events",
        paysim_primary_url="http://127.0.0.1:9",
        paysim_backup_url="http://127.0.0.1:9",
    )


@pytest.fixture
async def service(order_db: str) -> AsyncIterator[OrderService]:
    """The order service over the suite's Redis, with an events stream nobody else reads."""
    async with order_service(_settings(order_db, TEST_REDIS_URL)) as svc:
        yield svc
        await svc.redis.delete(svc.settings.events_stream, marker_key(svc.settings.events_stream))


async def _create_orders(service: OrderService, count: int) -> list[str]:
    """`count` new orders (each an order.created outbox event); their reservation ids."""
    tag = uuid.uuid4().hex[:8]
    events = [
        {
            "reservation_id": f"r-{tag}-{n}",
            "sale_id": 1,
            "user_id": f"buyer-{tag}-{n}",
            "sku": "SKU-RELAY",
            "quantity": 1,
            "unit_price": 500,
        }
        for n in range(count)
    ]
    assert await service.creation.create_orders(events) == count
    return [e["reservation_id"] for e in events]


async def _drain(service: OrderService) -> None:
    while await service.outbox.relay():
        pass


async def _outbox_ids(service: OrderService, reservation_ids: list[str]) -> list[int]:
    async with service.sessions() as session:
        rows = await session.scalars(
            text("SELECT id FROM outbox WHERE payload->>'reservation_id' = ANY(:rids) ORDER BY id"),
            {"rids": reservation_ids},
        )
        return list(rows)


async def _published_long_ago(service: OrderService, event_ids: list[int]) -> None:
    """Those events went out a minute ago, well before the republish window."""
    async with service.sessions.begin() as session:
        await session.execute(
            text("UPDATE outbox SET published_at = now() - interval '60 seconds' WHERE id = ANY(:ids)"),
            {"ids": event_ids},
        )


async def _stream_event_ids(redis: Redis, stream: str) -> list[int]:
    return [int(decode_event(fields)["event_id"]) for _, fields in await redis.xrange(stream)]


async def test_events_published_just_before_redis_lost_its_data_are_published_again_with_their_ids(
    service: OrderService,
) -> None:
    stream = service.settings.events_stream
    old = await _outbox_ids(service, await _create_orders(service, 3))
    await _drain(service)
    await _published_long_ago(service, old)
    recent = await _outbox_ids(service, await _create_orders(service, 4))
    await _drain(service)
    assert await _stream_event_ids(service.redis, stream) == old + recent

    # What a Redis that restarted without its data looks like: the stream and the marker beside it are gone.
    await service.redis.delete(stream, marker_key(stream))
    await _drain(service)

    assert await _stream_event_ids(service.redis, stream) == recent
    await _drain(service)
    assert await _stream_event_ids(service.redis, stream) == recent  # a Redis that kept its data: no repeats


async def test_a_redis_restarted_from_its_aof_gets_the_recent_events_again_and_nothing_older(
    order_db: str, aof_redis: PrivateRedis
) -> None:
    async with order_service(_settings(order_db, f"redis://127.0.0.1:{aof_redis.port}/0")) as service:
        stream = service.settings.events_stream
        old = await _outbox_ids(service, await _create_orders(service, 2))
        await _drain(service)
        await _published_long_ago(service, old)
        recent = await _outbox_ids(service, await _create_orders(service, 3))
        await _drain(service)
        before = await service.redis.xlen(stream)

        aof_redis.kill()
        aof_redis.start()  # same data (marker included), new run: it may have lost its last second
        await service.redis.connection_pool.disconnect()
        await _drain(service)

        after = await service.redis.xrange(stream)
        again = [int(decode_event(fields)["event_id"]) for _, fields in after[before:]]
        assert again == recent
        await _drain(service)
        assert await service.redis.xlen(stream) == before + len(recent)

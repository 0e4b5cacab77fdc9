"""The stream consumer helper: at-least-once delivery, claiming stale entries, dead-lettering."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc
from redis.asyncio import Redis

from services.common.contracts import EventType, decode_event, encode_event
from services.common.streams import (
    StreamConsumer,
    group_backlog,
    is_transient,
    trim_acknowledged,
)


def _consumer(redis: Redis, stream: str, name: str, handler: Any, **kw: Any) -> StreamConsumer:
    return StreamConsumer(redis=redis, stream=stream, group="g", consumer=name, handler=handler, block_ms=10, **kw)


async def test_entries_left_pending_by_a_dead_consumer_are_claimed_and_handled_once(redis: Redis) -> None:
    stream = f"test:{uuid.uuid4().hex}"
    for n in range(10):
        await redis.xadd(stream, encode_event(EventType.PURCHASE_RESERVED, {"n": n}))
    crashed = _consumer(redis, stream, "crashed", handler=None)
    await crashed.ensure_group()
    # The first consumer reads everything, then dies before acknowledging anything.
    await redis.xreadgroup("g", "crashed", {stream: ">"}, count=100)

    seen: list[int] = []

    async def handle(entry_id: str, fields: dict[str, Any]) -> None:
        seen.append(decode_event(fields)["n"])

    survivor = _consumer(redis, stream, "survivor", handle, claim_idle_ms=0)
    assert await survivor.read_once() == 0  # nothing new to read
    assert await survivor.claim_stale() == 10
    assert sorted(seen) == list(range(10))
    assert (await redis.xpending(stream, "g"))["pending"] == 0
    assert await survivor.claim_stale() == 0


async def test_failing_entry_is_retried_then_dead_lettered(redis: Redis) -> None:
    stream = f"test:{uuid.uuid4().hex}"
    await redis.xadd(stream, encode_event(EventType.ORDER_CANCELLED, {"poison": True}))
    await redis.xadd(stream, encode_event(EventType.ORDER_PAID, {"ok": True}))
    calls: list[str] = []

    async def handle(entry_id: str, fields: dict[str, Any]) -> None:
        event = decode_event(fields)
        calls.append(event["type"])
        if event.get("poison"):
            raise ValueError("cannot process")

    consumer = _consumer(redis, stream, "c1", handle, claim_idle_ms=0, max_deliveries=3)
    await consumer.ensure_group()
    assert await consumer.read_once() == 1  # the good one
    for _ in range(5):
        await consumer.claim_stale()
    assert calls.count(EventType.ORDER_CANCELLED) == 3
    assert calls.count(EventType.ORDER_PAID) == 1
    dead = await redis.xrange(consumer.dead_letter_stream)
    assert len(dead) == 1
    assert decode_event(dead[0][1])["poison"] is True
    assert (await redis.xpending(stream, "g"))["pending"] == 0


async def test_an_outage_longer_than_the_retries_dead_letters_nothing(redis: Redis) -> None:
    """The database down for more attempts than max_deliveries: the entries wait, then are handled once."""
    stream = f"test:{uuid.uuid4().hex}"
    for n in range(3):
        await redis.xadd(stream, encode_event(EventType.PURCHASE_RESERVED, {"n": n}))
    database_up = False
    handled: list[int] = []

    async def handle(entry_id: str, fields: dict[str, Any]) -> None:
        if not database_up:
            raise ConnectionRefusedError("[Errno 111] Connect call failed ('127.0.0.1', 5432)")
        handled.append(decode_event(fields)["n"])

    async def handle_batch(entries: list[tuple[str, dict[str, Any]]]) -> None:
        for entry_id, fields in entries:
            await handle(entry_id, fields)

    consumer = _consumer(redis, stream, "c1", handle, batch_handler=handle_batch, claim_idle_ms=0, max_deliveries=3)
    await consumer.ensure_group()
    with pytest.raises(ConnectionRefusedError):
        await consumer.read_once()
    for _ in range(8):  # far past max_deliveries
        with pytest.raises(ConnectionRefusedError):
            await consumer.claim_stale()
    assert await redis.xlen(consumer.dead_letter_stream) == 0
    assert (await redis.xpending(stream, "g"))["pending"] == 3

    database_up = True
    assert await consumer.claim_stale() == 3
    assert sorted(handled) == [0, 1, 2]
    assert (await redis.xpending(stream, "g"))["pending"] == 0
    assert await redis.xlen(consumer.dead_letter_stream) == 0


def test_transient_failures_are_told_apart_from_bad_entries() -> None:
    try:
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError as exc:
            raise RuntimeError("wrapped by a library") from exc
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    assert is_transient(asyncpg.exceptions.CannotConnectNowError("the database system is starting up"))
    assert not is_transient(ValueError("cannot process"))
    assert not is_transient(KeyError("sale_id"))
    assert is_transient(asyncpg.exceptions.DeadlockDetectedError("deadlock detected"))
    assert is_transient(asyncpg.exceptions.TooManyConnectionsError("too many clients"))
    assert is_transient(sqlalchemy.exc.TimeoutError("QueuePool limit of size 10 overflow 0 reached"))
    try:  # a statement timeout, wrapped by SQLAlchemy as an OperationalError: the entry's fault every time
        try:
            raise asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout")
        except asyncpg.exceptions.QueryCanceledError as exc:
            raise sqlalchemy.exc.OperationalError("SELECT ...", {}, exc) from exc
    except sqlalchemy.exc.OperationalError as wrapped:
        assert not is_transient(wrapped)


async def test_nothing_is_trimmed_before_every_required_group_exists(redis: Redis) -> None:
    stream = "test:trim-required"
    await redis.delete(stream)
    for n in range(4):
        await redis.xadd(stream, {"n": str(n)})
    await redis.xgroup_create(stream, "flashsale", id="0")
    read = await redis.xreadgroup("flashsale", "c1", {stream: ">"}, count=10)
    await redis.xack(stream, "flashsale", *[entry_id for entry_id, _ in read[0][1]])
    # coupon has not started yet: it will create its group at 0 and must find every entry
    assert await trim_acknowledged(redis, stream, required_groups=["flashsale", "coupon"]) == 0
    assert await redis.xlen(stream) == 4
    await redis.xgroup_create(stream, "coupon", id="0")
    assert await trim_acknowledged(redis, stream, required_groups=["flashsale", "coupon"]) == 0  # unread by coupon
    read = await redis.xreadgroup("coupon", "c1", {stream: ">"}, count=10)
    await redis.xack(stream, "coupon", *[entry_id for entry_id, _ in read[0][1]])
    assert await trim_acknowledged(redis, stream, required_groups=["flashsale", "coupon"]) == 4
    await redis.delete(stream)


async def test_group_backlog_tells_which_streams_still_have_work(redis: Redis) -> None:
    fresh, drained, unread, missing = (f"test:{uuid.uuid4().hex}" for _ in range(4))
    for stream in (fresh, drained, unread):
        await redis.xadd(stream, encode_event(EventType.PURCHASE_RESERVED, {"n": 1}))
    done: list[str] = []

    async def handle(entry_id: str, fields: dict[str, Any]) -> None:
        done.append(entry_id)

    drained_consumer = _consumer(redis, drained, "c", handle)
    await drained_consumer.ensure_group()
    assert await drained_consumer.read_once() == 1
    unread_consumer = _consumer(redis, unread, "c", handle)
    await unread_consumer.ensure_group()
    await redis.xadd(unread, encode_event(EventType.PURCHASE_RESERVED, {"n": 2}))

    backlog = await group_backlog(redis, [fresh, drained, unread, missing], "g")
    assert backlog == {fresh: True, drained: False, unread: True, missing: False}


async def test_trim_keeps_what_any_group_still_needs(redis: Redis) -> None:
    stream = "test:trim"
    await redis.delete(stream)
    ids = [await redis.xadd(stream, {"n": str(n)}) for n in range(10)]
    assert await trim_acknowledged(redis, stream) == 0  # no group yet: its consumer may not have started
    await redis.xgroup_create(stream, "fast", id="0")
    await redis.xgroup_create(stream, "slow", id="0")
    fast = await redis.xreadgroup("fast", "c1", {stream: ">"}, count=10)
    await redis.xack(stream, "fast", *[entry_id for entry_id, _ in fast[0][1][:8]])  # 2 still pending
    slow = await redis.xreadgroup("slow", "c1", {stream: ">"}, count=5)
    await redis.xack(stream, "slow", *[entry_id for entry_id, _ in slow[0][1]])  # all 5 read acknowledged

    assert await trim_acknowledged(redis, stream) == 5  # slow has not read entries 6-10 yet
    assert [entry_id for entry_id, _ in await redis.xrange(stream)] == ids[5:]
    await redis.xreadgroup("slow", "c1", {stream: ">"}, count=10)
    await redis.xack(stream, "slow", *ids[5:])
    assert await trim_acknowledged(redis, stream) == 3  # fast still holds entries 9 and 10 unacknowledged
    assert [entry_id for entry_id, _ in await redis.xrange(stream)] == ids[8:]
    await redis.xack(stream, "fast", *ids[8:])
    await trim_acknowledged(redis, stream)
    assert await redis.xlen(stream) == 0

"""rebuild.lua (reconciliation's repair mode) against Redis that is further along than the record it is given."""

from __future__ import annotations

from redis.asyncio import Redis

from services.flashsale.store import StockStore, bought_key, reservations_key, sale_key
from tests.conftest import TEST_REDIS_URL

SALE = 990_001


async def _seed(redis: Redis, reservations: dict[str, str]) -> StockStore:
    await redis.delete(sale_key(SALE), bought_key(SALE), reservations_key(SALE))
    await redis.hset(sale_key(SALE), mapping={"remaining": 0, "quantity": 10, "state": "live", "incarnation": "1"})
    if reservations:
        await redis.hset(reservations_key(SALE), mapping=reservations)
    return StockStore(redis, TEST_REDIS_URL)


async def test_payments_and_releases_redis_applied_after_the_snapshot_stand(redis: Redis) -> None:
    # Redis: r0 reserved, r1 paid and r2 released after the record was read; r3 bought and paid meanwhile.
    store = await _seed(redis, {"r0": "u0|1|reserved", "r1": "u1|2|paid", "r2": "u2|1|released", "r3": "u3|1|paid"})
    record = [("r0", "u0", 1, "reserved"), ("r1", "u1", 2, "reserved"), ("r2", "u2", 1, "reserved")]
    out = await store.rebuild(sale_id=SALE, incarnation="1", quantity=10, returned=0, config={}, known=record)

    # Nothing moved backwards, and r3 (known only to Redis) is counted: 1 reserved + 3 sold + 6 sellable = 10.
    assert (out.reserved, out.sold, out.remaining, out.excess) == (1, 3, 6, 0)
    res = await redis.hgetall(reservations_key(SALE))
    assert res == {"r0": "u0|1|reserved", "r1": "u1|2|paid", "r2": "u2|1|released", "r3": "u3|1|paid"}
    assert await redis.hgetall(bought_key(SALE)) == {"u0": "1", "u1": "2", "u3": "1"}


async def test_the_record_ahead_of_redis_wins_and_lost_reservations_come_back(redis: Redis) -> None:
    # Redis lost r1 (a crash) and has not yet applied r0's release; the record knows both.
    store = await _seed(redis, {"r0": "u0|2|reserved", "r9": "u9|1|reserved"})
    record = [("r0", "u0", 2, "released"), ("r1", "u1", 3, "sold")]
    out = await store.rebuild(sale_id=SALE, incarnation="1", quantity=10, returned=1, config={}, known=record)

    # r9 is in flight (accepted, no order yet): 1 reserved + 3 sold + 1 returned + 5 sellable = 10.
    assert (out.reserved, out.sold, out.in_flight, out.remaining) == (1, 3, 1, 5)
    assert (await redis.hgetall(reservations_key(SALE)))["r0"] == "u0|2|released"
    assert await redis.hgetall(bought_key(SALE)) == {"u1": "3", "u9": "1"}
    await redis.delete(sale_key(SALE), bought_key(SALE), reservations_key(SALE))

"""The rate limiter decides a whole event-loop iteration of requests in one script call (real Redis)."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from gateway.ratelimit import LimitClass, RateLimiter, bucket_key
from tests.gateway.conftest import GATEWAY_REDIS_URL, gateway_settings


async def test_one_batch_takes_exactly_the_burst_and_refusals_drain_nothing() -> None:
    limiter = RateLimiter(
        gateway_settings(redis_url=GATEWAY_REDIS_URL, user_rate=0.001, user_burst=3, ip_rate=0.001, ip_burst=5)
    )
    alice, bob = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    ip = f"10.0.{uuid.uuid4().int % 250}.1"
    try:
        # Six of alice's requests and two of bob's, all from one IP, in the same loop iteration: one call.
        waits = await asyncio.gather(
            *[limiter.check(alice, ip, LimitClass.SHOPPING) for _ in range(6)],
            *[limiter.check(bob, ip, LimitClass.SHOPPING) for _ in range(2)],
        )
        # Alice's bucket holds 3: her first three pass, the rest wait. Her refused requests took nothing
        # from the shared IP bucket (5), so both of bob's still pass (3 + 2 = 5 taken).
        assert [w == 0 for w in waits] == [True, True, True, False, False, False, True, True]
        assert all(w >= 1 for w in waits[3:6])
        # The IP bucket is now empty: anyone else from it waits, anyone from another IP passes.
        assert await limiter.check(f"carol-{uuid.uuid4().hex[:8]}", ip, LimitClass.SHOPPING) >= 1
        assert await limiter.check(f"carol-{uuid.uuid4().hex[:8]}", "10.9.9.9", LimitClass.SHOPPING) == 0
        # Each bucket is one key with an expiry, gone once it would be full again.
        redis = Redis.from_url(GATEWAY_REDIS_URL)
        ttl = await redis.pttl(bucket_key(LimitClass.SHOPPING, "u", alice))
        await redis.aclose()
        assert ttl > 0
    finally:
        await limiter.aclose()


async def test_purchase_buckets_are_apart_from_the_general_ones() -> None:
    limiter = RateLimiter(
        gateway_settings(redis_url=GATEWAY_REDIS_URL, purchase_user_rate=0.001, purchase_user_burst=1)
    )
    user = f"buyer-{uuid.uuid4().hex[:8]}"
    try:
        assert await limiter.check(user, "10.1.1.1", LimitClass.PURCHASE) == 0
        assert await limiter.check(user, "10.1.1.1", LimitClass.PURCHASE) >= 1  # one purchase token only
        assert await limiter.check(user, "10.1.1.1", LimitClass.SHOPPING) == 0  # browsing still passes
    finally:
        await limiter.aclose()


async def test_rates_whose_interval_is_not_a_whole_number_of_milliseconds_still_pass_their_burst() -> None:
    # 6/s is an interval of 166.67 ms: rounding in fractional milliseconds once refused such buckets' tokens.
    for burst in (1, 5):
        limiter = RateLimiter(gateway_settings(redis_url=GATEWAY_REDIS_URL, ip_rate=6, ip_burst=burst))
        ip = f"10.77.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
        try:
            waits = await asyncio.gather(*[limiter.check(None, ip, LimitClass.SHOPPING) for _ in range(burst + 1)])
            assert waits[:burst] == [0] * burst
            assert waits[burst] == 1  # the next token comes within a second
        finally:
            await limiter.aclose()


async def test_a_bucket_many_requests_of_a_batch_share_ends_with_every_take_counted() -> None:
    # 30 users behind one address in one loop iteration: the address's bucket is read once and written once
    # by the script, and must end exactly as 20 takes one after another would leave it.
    limiter = RateLimiter(gateway_settings(redis_url=GATEWAY_REDIS_URL, ip_rate=1, ip_burst=20))
    ip = f"10.88.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    users = [f"crowd-{uuid.uuid4().hex[:8]}" for _ in range(30)]
    try:
        waits = await asyncio.gather(*[limiter.check(user, ip, LimitClass.SHOPPING) for user in users])
        assert [w == 0 for w in waits] == [True] * 20 + [False] * 10
        assert await limiter.check(f"late-{uuid.uuid4().hex[:8]}", ip, LimitClass.SHOPPING) == 1
        redis = Redis.from_url(GATEWAY_REDIS_URL)
        try:
            # 20 tokens at 1/s: full again 20 s from now, and the key lives a second past that.
            ttl = await redis.pttl(bucket_key(LimitClass.SHOPPING, "ip", ip))
            users_ttl = [await redis.pttl(bucket_key(LimitClass.SHOPPING, "u", user)) for user in users]
        finally:
            await redis.aclose()
        assert 19_000 < ttl <= 21_000
        # Each admitted user's own bucket took one token; the refused ones took nothing and have no key.
        assert all(t > 0 for t in users_ttl[:20])
        assert all(t == -2 for t in users_ttl[20:])
    finally:
        await limiter.aclose()

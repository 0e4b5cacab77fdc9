"""The rate limiter decides a whole event-loop iteration of requests in one script call (real Redis)."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from gateway.ratelimit import RateLimiter
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
            *[limiter.check(alice, ip, purchase=False) for _ in range(6)],
            *[limiter.check(bob, ip, purchase=False) for _ in range(2)],
        )
        # Alice's bucket holds 3: her first three pass, the rest wait. Her refused requests took nothing
        # from the shared IP bucket (5), so both of bob's still pass (3 + 2 = 5 taken).
        assert [w == 0 for w in waits] == [True, True, True, False, False, False, True, True]
        assert all(w >= 1 for w in waits[3:6])
        # The IP bucket is now empty: anyone else from it waits, anyone from another IP passes.
        assert await limiter.check(f"carol-{uuid.uuid4().hex[:8]}", ip, purchase=False) >= 1
        assert await limiter.check(f"carol-{uuid.uuid4().hex[:8]}", "10.9.9.9", purchase=False) == 0
        # Each bucket is one key with an expiry, gone once it would be full again.
        redis = Redis.from_url(GATEWAY_REDIS_URL)
        ttl = await redis.pttl(f"rl:g:u:{alice}")
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
        assert await limiter.check(user, "10.1.1.1", purchase=True) == 0
        assert await limiter.check(user, "10.1.1.1", purchase=True) >= 1  # one purchase token only
        assert await limiter.check(user, "10.1.1.1", purchase=False) == 0  # browsing still passes
    finally:
        await limiter.aclose()


async def test_rates_whose_interval_is_not_a_whole_number_of_milliseconds_still_pass_their_burst() -> None:
    # 6/s is an interval of 166.67 ms: rounding in fractional milliseconds once refused such buckets' tokens.
    for burst in (1, 5):
        limiter = RateLimiter(gateway_settings(redis_url=GATEWAY_REDIS_URL, ip_rate=6, ip_burst=burst))
        ip = f"10.77.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
        try:
            waits = await asyncio.gather(*[limiter.check(None, ip, purchase=False) for _ in range(burst + 1)])
            assert waits[:burst] == [0] * burst
            assert waits[burst] == 1  # the next token comes within a second
        finally:
            await limiter.aclose()

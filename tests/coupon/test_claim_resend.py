"""A claim whose call failed is sent once more and counted once (real Redis)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from services.coupon.store import ClaimStore, template_key
from tests.conftest import TEST_REDIS_URL

TEMPLATE = 880_001
CONFIG = {"incarnation": "1", "kind": "fixed_off", "state": "active", "total": 10, "limit": 1, "starts": "", "ends": ""}


async def test_a_claim_whose_answer_timed_out_is_resent_and_replays_the_first(redis: Redis) -> None:
    # CLIENT PAUSE holds the writes of every client of this Redis (the suite runs one test at a time).
    # A client whose reads give up after 0.5 s, and Redis holding every write for 0.8 s: the first call
    # times out while queued (its connection is dropped, so Redis discards it) and the resend makes the claim.
    # Had the first one run, the resend would answer REPLAY with the same coupon: either way one claim.
    impatient = Redis.from_url(TEST_REDIS_URL, decode_responses=True, socket_timeout=0.5)
    store = ClaimStore(impatient)
    try:
        await store.load_template(template_id=TEMPLATE, config=CONFIG)
        await store.claim(template_id=TEMPLATE, user_id="warm", coupon_id="c-warm", key="k", ttl=60)  # loads the script
        await redis.execute_command("CLIENT", "PAUSE", 800, "WRITE")
        result = await store.claim(template_id=TEMPLATE, user_id="slow", coupon_id="c-first", key="k", ttl=60)
        assert result[0] in ("OK", "REPLAY")
        assert result[1] == "c-first"
        assert await store.claimed(TEMPLATE) == 2  # the warm-up claim and this one, counted once
        assert await redis.hget(f"{{cp:{TEMPLATE}}}:users", "slow") == "1"
        again = await store.claim(template_id=TEMPLATE, user_id="slow", coupon_id="c-other", key="k2", ttl=60)
        assert again[0] == "LIMIT"  # the resent claim did not let the user past the per-user limit
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
        await redis.delete(template_key(TEMPLATE), f"{{cp:{TEMPLATE}}}:users")
        await impatient.aclose()
        await asyncio.sleep(0)

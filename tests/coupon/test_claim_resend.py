"""A claim call that failed fast is sent once more and counted once (real Redis, faults injected around the script)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.contracts import template_tag
from services.coupon.store import CLAIM_STREAM_REGISTRY, ClaimStore, claim_stream, claims_key, template_key

TEMPLATE = 880_001
CONFIG = {"incarnation": "1", "kind": "fixed_off", "state": "active", "total": 10, "limit": 1, "starts": "", "ends": ""}


class FlakyScript:
    """The real claim script, with a fault on its first call: before it runs, or after (the answer lost)."""

    def __init__(self, script: Any, fault: str, delay: float = 0.0) -> None:
        self.script, self.fault, self.delay, self.calls = script, fault, delay, 0

    @classmethod
    def around(cls, store: ClaimStore, monkeypatch: pytest.MonkeyPatch, fault: str, delay: float = 0.0) -> FlakyScript:
        """Put one around `store`'s claim script for the test."""
        flaky = cls(store._claim, fault, delay)
        monkeypatch.setattr(store, "_claim", flaky)
        return flaky

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        self.calls += 1
        if self.calls > 1:
            return await self.script(keys=keys, args=args)
        await asyncio.sleep(self.delay)
        if self.fault == "broken connection":
            raise RedisConnectionError("Connection reset by peer")
        await self.script(keys=keys, args=args)
        raise RedisTimeoutError("Timeout reading from 127.0.0.1:6379")


@pytest.fixture
async def store(redis: Redis) -> AsyncIterator[ClaimStore]:
    claims = ClaimStore(redis)
    await claims.load_template(template_id=TEMPLATE, config=CONFIG)
    yield claims
    await redis.delete(template_key(TEMPLATE), claims_key(TEMPLATE), claim_stream(TEMPLATE))
    await redis.srem(CLAIM_STREAM_REGISTRY, claim_stream(TEMPLATE))
    async for key in redis.scan_iter(match=f"{template_tag(TEMPLATE)}:idem:*"):
        await redis.delete(key)


async def _claim(store: ClaimStore, user: str, coupon_id: str, key: str = "k") -> list[Any]:
    return await store.claim(template_id=TEMPLATE, user_id=user, coupon_id=coupon_id, key=key, ttl=60)


async def test_a_claim_whose_connection_broke_is_resent_and_counted_once(
    store: ClaimStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = FlakyScript.around(store, monkeypatch, "broken connection")
    result = await _claim(store, "u-1", "c-first")
    assert (flaky.calls, result[:2]) == (2, ["OK", "c-first"])
    assert await store.claimed(TEMPLATE) == 1
    assert await redis.xlen(claim_stream(TEMPLATE)) == 1  # one claim for the wallets


async def test_a_claim_whose_answer_was_lost_answers_its_own_coupon(
    store: ClaimStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = FlakyScript.around(store, monkeypatch, "answer lost")
    result = await _claim(store, "u-2", "c-first")
    assert (flaky.calls, result) == (2, ["REPLAY", "c-first"])
    assert await store.claimed(TEMPLATE) == 1
    assert await redis.xlen(claim_stream(TEMPLATE)) == 1
    assert (await _claim(store, "u-2", "c-other", key="k2"))[0] == "LIMIT"  # the user's limit counted it once


async def test_a_claim_that_failed_slowly_is_not_resent(
    store: ClaimStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "resend_within_seconds", 0.05)
    flaky = FlakyScript.around(store, monkeypatch, "broken connection", delay=0.1)
    with pytest.raises(RedisConnectionError):
        await _claim(store, "u-3", "c-first")
    assert flaky.calls == 1
    assert await store.claimed(TEMPLATE) == 0

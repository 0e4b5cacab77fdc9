"""The generic Idempotency-Key store used by state-changing admin calls."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from services.common.errors import ProblemError
from services.common.idempotency import IdempotencyKeyReused, IdempotencyStore


async def test_action_runs_once_and_replays_the_first_answer(redis: Redis) -> None:
    store = IdempotencyStore(redis, f"t{uuid.uuid4().hex}")
    runs = 0

    async def action() -> tuple[int, dict[str, int]]:
        nonlocal runs
        runs += 1
        return 201, {"id": runs}

    first = await store.run(key="k", owner="u", request_fingerprint="fp", action=action)
    again = await store.run(key="k", owner="u", request_fingerprint="fp", action=action)
    assert first == again == (201, {"id": 1})
    assert runs == 1
    with pytest.raises(IdempotencyKeyReused):
        await store.run(key="k", owner="u", request_fingerprint="other", action=action)
    other_owner = await store.run(key="k", owner="v", request_fingerprint="fp", action=action)
    assert other_owner == (201, {"id": 2})


async def test_a_refused_action_frees_the_key(redis: Redis) -> None:
    store = IdempotencyStore(redis, f"t{uuid.uuid4().hex}")

    async def refuse() -> tuple[int, dict[str, int]]:
        raise ProblemError("no", status=409, code="NOPE")

    async def accept() -> tuple[int, dict[str, int]]:
        await asyncio.sleep(0)
        return 200, {"ok": 1}

    with pytest.raises(ProblemError):
        await store.run(key="k", owner="u", request_fingerprint="fp", action=refuse)
    assert await store.run(key="k", owner="u", request_fingerprint="fp", action=accept) == (200, {"ok": 1})

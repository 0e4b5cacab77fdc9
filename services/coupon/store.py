"""The coupon service's Redis: the claim gate per template (hash tag `{cp:<template id>}`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)
LUA_DIR = Path(__file__).parent / "lua"
CLAIM_STREAM_REGISTRY = "cp:streams"


def _tag(template_id: int) -> str:
    return f"{{cp:{template_id}}}"


def template_key(template_id: int) -> str:
    """Hash: state, total, claimed, per-user limit, claim window (ms)."""
    return f"{_tag(template_id)}:t"


def claims_key(template_id: int) -> str:
    """Hash: user id -> coupons claimed."""
    return f"{_tag(template_id)}:users"


def claim_stream(template_id: int) -> str:
    """Claims of one template, persisted into wallets by a consumer group."""
    return f"{_tag(template_id)}:claims"


def claim_idempotency_key(template_id: int, user_id: str, key: str) -> str:
    """One claim per user and Idempotency-Key (length-prefixed)."""
    return f"{_tag(template_id)}:idem:{len(user_id)}:{user_id}:{key}"


class ClaimStore:
    """Claims decided in Redis, one Lua call each."""

    # A failed claim call is resent only when it failed within this long (see claim()).
    resend_within_seconds = 1.0

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script((LUA_DIR / "claim.lua").read_text())
        self._load = redis.register_script((LUA_DIR / "load_template.lua").read_text())
        self._restore = redis.register_script((LUA_DIR / "restore_template.lua").read_text())

    async def load_template(self, *, template_id: int, config: dict[str, Any]) -> None:
        """Write a template's claim configuration; its claim counters start at zero only the first time.

        Counters left by another template with the same id (the database was recreated while Redis kept
        its data) belong to coupons that no longer exist, and are cleared.
        """
        args: list[Any] = [config["incarnation"]]
        for field, value in config.items():
            args += [field, value]
        await self._load(keys=[template_key(template_id), claims_key(template_id)], args=args)
        await self.redis.sadd(CLAIM_STREAM_REGISTRY, claim_stream(template_id))

    async def set_state(self, template_id: int, state: str) -> None:
        """active or paused."""
        await self.redis.hset(template_key(template_id), "state", state)

    async def claim(
        self, *, template_id: int, user_id: str, coupon_id: str, key: str, ttl: int, compensation: bool = False
    ) -> list[Any]:
        """Run the claim script; once more if the first call failed fast (a broken or refused connection).

        Safe to resend: the script is keyed by the claim's Idempotency-Key, so a first call that did run
        answers REPLAY with its coupon the second time. A call that failed slowly (a reply or a pool slot
        that did not come within the client's timeouts) is not resent: by then the gateway has given up on
        the request, and a second wait would only add load to a Redis that is already slow.
        """
        keys = [
            template_key(template_id),
            claims_key(template_id),
            claim_idempotency_key(template_id, user_id, key),
            claim_stream(template_id),
        ]
        args: list[str | int] = [user_id, coupon_id, ttl, template_id, "1" if compensation else "0"]
        started = time.monotonic()
        try:
            result: list[Any] = await self._claim(keys=keys, args=args)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if time.monotonic() - started > self.resend_within_seconds:
                raise
            log.info("claim script call failed (%s: %s); sending it once more", type(exc).__name__, exc)
            result = await self._claim(keys=keys, args=args)
        return result

    async def claimed(self, template_id: int) -> int:
        """How many coupons of a template were claimed."""
        return int(await self.redis.hget(template_key(template_id), "claimed") or 0)

    async def missing(self, template_ids: list[int]) -> list[int]:
        """The templates whose Redis counters are gone (Redis lost data)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for template_id in template_ids:
                pipe.hexists(template_key(template_id), "total")
            present = await pipe.execute()
        return [t for t, here in zip(template_ids, present, strict=True) if not here]

    async def restore_template(
        self, *, template_id: int, config: dict[str, Any], claimed: int, held: dict[str, int]
    ) -> bool:
        """Rebuild a lost template's counters from the record; False when Redis has them (nothing written)."""
        args: list[Any] = [claimed, len(config)]
        for field, value in config.items():
            args += [field, value]
        for user_id, count in held.items():
            args += [user_id, count]
        res = await self._restore(keys=[template_key(template_id), claims_key(template_id)], args=args)
        await self.redis.sadd(CLAIM_STREAM_REGISTRY, claim_stream(template_id))
        return bool(res[0] == "RESTORED")

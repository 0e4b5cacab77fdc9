"""The coupon service's Redis: the claim gate per template (hash tag `{cp:<template id>}`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.contracts import CLAIM_STREAM_REGISTRY, claim_stream, decode_event, template_tag
from services.common.resources import RedisClient, redis_run_id

log = logging.getLogger(__name__)
LUA_DIR = Path(__file__).parent / "lua"
# The run id of the Redis server whose data the counters were last checked against (a plain string). A
# different run id (Redis restarted: AOF loses up to a second) or none (Redis lost everything) means the
# counters must be checked against the record again. One global key: read once per tick per replica.
# The coupon service's global keys share the tag `{cp}` (one master holds them all, and its run id is the
# one compared); each template's keys have their own tag `{cp:<template id>}`.
RECOVERED_RUN_KEY = "{cp}:recovered-run-id"
# Who is checking the counters after a restart (SET NX with a TTL): one replica at a time, since two
# checks racing would both count the same lost claims again.
RECOVERY_LEASE_KEY = "{cp}:recovery-lease"
# Coupons locked before this time (ISO 8601) are to be settled from the order record: their order's event
# may have been lost with Redis. Set by the check after a restart, deleted once they are settled.
SETTLE_LOCKS_KEY = "{cp}:settle-locked-before"
DELETE_IF_UNCHANGED = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def template_key(template_id: int) -> str:
    """Hash: state, total, claimed, per-user limit, claim window (ms)."""
    return f"{template_tag(template_id)}:t"


def claims_key(template_id: int) -> str:
    """Hash: user id -> coupons claimed."""
    return f"{template_tag(template_id)}:users"


def claim_idempotency_key(template_id: int, user_id: str, key: str) -> str:
    """One claim per user and Idempotency-Key (length-prefixed)."""
    return f"{template_tag(template_id)}:idem:{len(user_id)}:{user_id}:{key}"


class ClaimStore:
    """Claims decided in Redis, one Lua call each."""

    # A failed claim call is resent only when it failed within this long (see claim()).
    resend_within_seconds = 1.0

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._claim = redis.register_script((LUA_DIR / "claim.lua").read_text())
        self._load = redis.register_script((LUA_DIR / "load_template.lua").read_text())
        self._restore = redis.register_script((LUA_DIR / "restore_template.lua").read_text())
        self._count_again = redis.register_script((LUA_DIR / "count_again.lua").read_text())
        self._delete_if = redis.register_script(DELETE_IF_UNCHANGED)

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

    async def run_id(self) -> str:
        """The run id of the Redis server holding the recovery keys: a new one after every restart."""
        return await redis_run_id(self.redis, RECOVERED_RUN_KEY)

    async def recovered_run_id(self) -> str | None:
        """The run id the counters were last checked against; None when Redis lost it too."""
        value: str | None = await self.redis.get(RECOVERED_RUN_KEY)  # type: ignore[assignment]
        return value

    async def take_recovery_lease(self, holder: str, seconds: int) -> bool:
        """True when this replica may check the counters now (nobody else is)."""
        return bool(await self.redis.set(RECOVERY_LEASE_KEY, holder, nx=True, ex=seconds))

    async def finish_recovery(self, run_id: str, *, settle_locked_before: str) -> None:
        """Record that the counters of this Redis run were checked, and which locks to settle."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(SETTLE_LOCKS_KEY, settle_locked_before)
            pipe.set(RECOVERED_RUN_KEY, run_id)
            await pipe.execute()

    async def give_back_recovery_lease(self) -> None:
        """Let another replica check next time (this one finished or failed)."""
        await self.redis.delete(RECOVERY_LEASE_KEY)

    async def locks_to_settle(self) -> str | None:
        """Coupons locked before this time are to be settled from the order record (None: nothing to do)."""
        value: str | None = await self.redis.get(SETTLE_LOCKS_KEY)  # type: ignore[assignment]
        return value

    async def locks_settled(self, locked_before: str) -> None:
        """Those locks are settled; a newer request set meanwhile stays."""
        await self._delete_if(keys=[SETTLE_LOCKS_KEY], args=[locked_before])

    async def restored_at_ms(self, template_id: int) -> int | None:
        """When the template's counters were last rebuilt from the wallets (Redis time, ms); None if never."""
        value = await self.redis.hget(template_key(template_id), "restored_at_ms")
        return int(value) if value else None

    async def streamed_coupons(self, template_id: int) -> set[str]:
        """Every coupon id in the template's claim stream: the claims this Redis still knows."""
        found: set[str] = set()
        start = "-"
        while True:
            batch: list[tuple[str, dict[str, str]]] = await self.redis.xrange(  # type: ignore[assignment]
                claim_stream(template_id), min=start, count=5_000
            )
            for _entry_id, fields in batch:
                found.add(str(decode_event(fields)["coupon_id"]))
            if len(batch) < 5_000:
                return found
            start = "(" + batch[-1][0]

    async def count_again(self, *, template_id: int, claims: list[tuple[str, str, int]]) -> int:
        """Count claims again that Redis lost but the wallets hold ((coupon, user, claimed at ms) each)."""
        counted = 0
        for first in range(0, len(claims), 500):
            args: list[Any] = [template_id]
            for coupon_id, user_id, claimed_at_ms in claims[first : first + 500]:
                args += [coupon_id, user_id, claimed_at_ms]
            keys = [template_key(template_id), claims_key(template_id), claim_stream(template_id)]
            counted += int(await self._count_again(keys=keys, args=args))
        return counted

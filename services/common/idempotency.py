"""`Idempotency-Key` handling: the header, the request fingerprint, and a Redis-backed replay store."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request

from services.common.errors import ProblemError
from services.common.resources import RedisClient

MAX_KEY_LENGTH = 200
REPLAY_TTL_SECONDS = 24 * 3600
IN_FLIGHT_TTL_SECONDS = 60


class IdempotencyKeyRequired(ProblemError):
    status = 400
    code = "IDEMPOTENCY_KEY_REQUIRED"
    title = "Idempotency-Key header required"


class IdempotencyKeyReused(ProblemError):
    status = 422
    code = "IDEMPOTENCY_KEY_REUSED"
    title = "Idempotency-Key reused with a different request"


class IdempotencyKeyInFlight(ProblemError):
    status = 409
    code = "IDEMPOTENCY_KEY_IN_FLIGHT"
    title = "A request with this Idempotency-Key is still being processed"


async def idempotency_key(request: Request) -> str:
    """The request's Idempotency-Key header, checked (raises IdempotencyKeyRequired)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        raise IdempotencyKeyRequired("Send an Idempotency-Key header (a unique string per intended action)")
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise IdempotencyKeyRequired(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters")
    return key


IdempotencyKey = Annotated[str, Depends(idempotency_key)]


def fingerprint(payload: Any) -> str:
    """A stable digest of a request payload: same JSON meaning, same fingerprint."""
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:32]


def record_key(namespace: str, owner: str, key: str) -> str:
    """One stored answer per (namespace, owner, Idempotency-Key), owner length-prefixed.

    No hash tag, on purpose: no command takes two records, so on a Redis Cluster they spread over every slot
    and their load over every master.
    """
    return f"idem:{namespace}:{len(owner)}:{owner}:{key}"


class IdempotencyStore:
    """Replays the first answer of a state-changing call made again with the same key."""

    def __init__(self, redis: RedisClient, namespace: str) -> None:
        self.redis = redis
        self.namespace = namespace

    async def run(
        self,
        *,
        key: str,
        owner: str,
        request_fingerprint: str,
        action: Callable[[], Awaitable[tuple[int, Any]]],
    ) -> tuple[int, Any]:
        """Run `action` once per (owner, key); later calls get the stored (status, body) back."""
        rkey = record_key(self.namespace, owner, key)
        pending = orjson.dumps({"state": "pending", "fp": request_fingerprint})
        if not await self.redis.set(rkey, pending, nx=True, ex=IN_FLIGHT_TTL_SECONDS):
            stored = await self.redis.get(rkey)
            if stored is None:
                raise IdempotencyKeyInFlight("Retry shortly")
            record = orjson.loads(stored)
            if record["fp"] != request_fingerprint:
                raise IdempotencyKeyReused("This Idempotency-Key was used for a different request")
            if record["state"] == "pending":
                raise IdempotencyKeyInFlight("Retry shortly", headers={"Retry-After": "1"})
            return int(record["status"]), record["body"]
        try:
            status, body = await action()
        except BaseException:
            # A refused or failed request changed nothing, so the key is free to be used again.
            await self.redis.delete(rkey)
            raise
        done = orjson.dumps({"state": "done", "fp": request_fingerprint, "status": status, "body": body})
        await self.redis.set(rkey, done, ex=REPLAY_TTL_SECONDS)
        return status, body

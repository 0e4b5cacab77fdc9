"""Idempotency-Key records of pay and cancel in the order database, so neither route needs Redis.

A record is claimed by one statement and answered by another. Cancel runs them around its own transaction
(`OrderIdempotency.run`); pay writes them inside its claim and settlement statements (key_claim, KEY_HELD,
key_answer; services/order/checkout.py), so a pay commits twice instead of four times.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Histogram
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.idempotency import (
    IN_FLIGHT_TTL_SECONDS,
    REPLAY_TTL_SECONDS,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
)
from services.common.metrics import LATENCY_BUCKETS

SWEEP_BATCH = 1000
RECORD_SECONDS = Histogram(
    "order_idempotency_record_seconds",
    "Time of the Idempotency-Key record's own statements (claim the key, store the answer)",
    ["scope", "step"],
    buckets=LATENCY_BUCKETS,
)


@dataclass(frozen=True, slots=True)
class KeyUse:
    """One request's use of an Idempotency-Key: the route's scope, the caller, the key, the request's fingerprint."""

    scope: str
    owner: str
    key: str
    fingerprint: str

    def params(self) -> dict[str, Any]:
        """The bind parameters of the record statements (key_claim, KEY_HELD, key_answer)."""
        return {
            "scope": self.scope,
            "owner": self.owner,
            "key": self.key,
            "fp": self.fingerprint,
            "in_flight": float(IN_FLIGHT_TTL_SECONDS),
            "ttl": float(REPLAY_TTL_SECONDS),
        }


def key_claim(condition: str = "TRUE") -> str:
    """A CTE, `key_claim`, with one row when this statement took the key: a new record, or an expired one (an
    in-flight marker left by a crash, or an answer past its TTL) claimed anew. Tried only when `condition` (SQL)
    holds, so a request refused before it changes anything leaves no record."""
    return f"""key_claim AS (
    INSERT INTO idempotency_records (scope, owner, key, fingerprint, expires_at)
    SELECT :scope, :owner, :key, :fp, now() + make_interval(secs => :in_flight) WHERE ({condition})
    ON CONFLICT (scope, owner, key) DO UPDATE
        SET fingerprint = EXCLUDED.fingerprint, status = NULL, body = NULL, expires_at = EXCLUDED.expires_at
        WHERE idempotency_records.expires_at <= now()
    RETURNING 1
)"""


# Joined onto a one-row FROM: `held`, the record that holds the key when `key_claim` did not take it. It is read
# in the statement's snapshot, so a record committed by another request a moment ago may be invisible: that
# request is in flight.
KEY_HELD = """LEFT JOIN idempotency_records AS held
    ON held.scope = :scope AND held.owner = :owner AND held.key = :key AND held.expires_at > now()
    AND NOT EXISTS (SELECT 1 FROM key_claim)"""


def key_answer(condition: str = "TRUE") -> str:
    """A CTE, `key_answer`, that stores :status and :body for the key's holder when `condition` (SQL) holds."""
    return f"""key_answer AS (
    UPDATE idempotency_records
    SET status = :status, body = :body, expires_at = now() + make_interval(secs => :ttl)
    WHERE scope = :scope AND owner = :owner AND key = :key AND fingerprint = :fp AND status IS NULL AND ({condition})
)"""


_CLAIM = text(
    f"WITH {key_claim()} SELECT EXISTS (SELECT 1 FROM key_claim), held.fingerprint, held.status, held.body "
    f"FROM (SELECT 1) AS one {KEY_HELD}"
)
_ANSWER = text(f"WITH {key_answer()} SELECT 1")
_RELEASE = text(
    "DELETE FROM idempotency_records"
    " WHERE scope = :scope AND owner = :owner AND key = :key AND fingerprint = :fp AND status IS NULL"
)
_SWEEP = text(
    "DELETE FROM idempotency_records WHERE ctid = ANY(ARRAY("
    "SELECT ctid FROM idempotency_records WHERE expires_at <= now() LIMIT :batch))"
)


def replay(use: KeyUse, fp: str | None, status: int | None, body: str | None) -> tuple[int, Any]:
    """The first answer stored for a key another request holds, or the error that says why there is none."""
    if fp is None:
        raise IdempotencyKeyInFlight("Retry shortly", headers={"Retry-After": "1"})
    if fp != use.fingerprint:
        raise IdempotencyKeyReused("This Idempotency-Key was used for a different request")
    if status is None or body is None:
        raise IdempotencyKeyInFlight("Retry shortly", headers={"Retry-After": "1"})
    return status, orjson.loads(body)


class OrderIdempotency:
    """Replays the first answer of a pay or cancel made again with the same key (records in PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        # Each statement stands alone: autocommit spares the BEGIN and COMMIT round trips.
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def run(
        self,
        *,
        scope: str,
        key: str,
        owner: str,
        request_fingerprint: str,
        action: Callable[[], Awaitable[tuple[int, Any]]],
    ) -> tuple[int, Any]:
        """Run `action` once per (scope, owner, key); later calls get the stored (status, body) back."""
        use = KeyUse(scope, owner, key, request_fingerprint)
        started = time.perf_counter()
        async with self.engine.connect() as conn:
            claimed, fp, status, body = (await conn.execute(_CLAIM, use.params())).one()
        RECORD_SECONDS.labels(scope, "claim").observe(time.perf_counter() - started)
        if not claimed:
            return replay(use, fp, status, body)
        try:
            status, answer = await action()
        except BaseException:
            await self.release(use)  # a refused or failed request changed nothing, so the key is free again
            raise
        started = time.perf_counter()
        await self.answer(use, status, answer)
        RECORD_SECONDS.labels(scope, "answer").observe(time.perf_counter() - started)
        return status, answer

    async def answer(self, use: KeyUse, status: int, answer: Any) -> None:
        """Store the answer of the request that holds the key."""
        params = {**use.params(), "status": status, "body": orjson.dumps(answer).decode()}
        async with self.engine.connect() as conn:
            await conn.execute(_ANSWER, params)

    async def release(self, use: KeyUse) -> None:
        """Free a key whose request ended without an answer to keep."""
        async with self.engine.connect() as conn:
            await conn.execute(_RELEASE, use.params())

    async def sweep_expired(self) -> int:
        """Delete a batch of expired records; how many went."""
        async with self.engine.connect() as conn:
            result = await conn.execute(_SWEEP, {"batch": SWEEP_BATCH})
        return int(result.rowcount)

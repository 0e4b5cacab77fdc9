"""Idempotency-Key records of pay and cancel in the order database, so neither route needs Redis."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
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
    "Time of the Idempotency-Key record's statements of pay and cancel (claim the key, store the answer)",
    ["scope", "step"],
    buckets=LATENCY_BUCKETS,
)

# One statement claims the key or, when it is taken, reads what holds it. The read sees the statement's
# snapshot, so a record committed by another request a moment ago may be invisible: that request is in flight.
# An expired record (an in-flight marker left by a crash, or an answer past its TTL) is claimed anew.
_CLAIM = text(
    """
    WITH claimed AS (
        INSERT INTO idempotency_records (scope, owner, key, fingerprint, expires_at)
        VALUES (:scope, :owner, :key, :fp, now() + make_interval(secs => :in_flight))
        ON CONFLICT (scope, owner, key) DO UPDATE
            SET fingerprint = EXCLUDED.fingerprint, status = NULL, body = NULL, expires_at = EXCLUDED.expires_at
            WHERE idempotency_records.expires_at <= now()
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM claimed), r.fingerprint, r.status, r.body
    FROM (SELECT 1) AS one
    LEFT JOIN idempotency_records AS r
        ON r.scope = :scope AND r.owner = :owner AND r.key = :key AND r.expires_at > now()
        AND NOT EXISTS (SELECT 1 FROM claimed)
    """
)
_ANSWER = text(
    """
    UPDATE idempotency_records
    SET status = :status, body = :body, expires_at = now() + make_interval(secs => :ttl)
    WHERE scope = :scope AND owner = :owner AND key = :key AND fingerprint = :fp AND status IS NULL
    """
)
_RELEASE = text(
    "DELETE FROM idempotency_records"
    " WHERE scope = :scope AND owner = :owner AND key = :key AND fingerprint = :fp AND status IS NULL"
)
_SWEEP = text(
    "DELETE FROM idempotency_records WHERE ctid = ANY(ARRAY("
    "SELECT ctid FROM idempotency_records WHERE expires_at <= now() LIMIT :batch))"
)


class OrderIdempotency:
    """Replays the first answer of a pay or cancel made again with the same key (records in PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        # Each statement stands alone: autocommit spares the BEGIN and COMMIT round trips on the pay path.
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
        ids = {"scope": scope, "owner": owner, "key": key, "fp": request_fingerprint}
        started = time.perf_counter()
        async with self.engine.connect() as conn:
            row = (await conn.execute(_CLAIM, {**ids, "in_flight": float(IN_FLIGHT_TTL_SECONDS)})).one()
        RECORD_SECONDS.labels(scope, "claim").observe(time.perf_counter() - started)
        claimed, fp, status, body = row
        if not claimed:
            return self._stored(fp, status, body, request_fingerprint)
        try:
            status, answer = await action()
        except BaseException:
            # A refused or failed request changed nothing, so the key is free to be used again.
            async with self.engine.connect() as conn:
                await conn.execute(_RELEASE, ids)
            raise
        started = time.perf_counter()
        async with self.engine.connect() as conn:
            await conn.execute(
                _ANSWER,
                {**ids, "status": status, "body": orjson.dumps(answer).decode(), "ttl": float(REPLAY_TTL_SECONDS)},
            )
        RECORD_SECONDS.labels(scope, "answer").observe(time.perf_counter() - started)
        return status, answer

    @staticmethod
    def _stored(fp: str | None, status: int | None, body: str | None, request_fingerprint: str) -> tuple[int, Any]:
        if fp is None:
            raise IdempotencyKeyInFlight("Retry shortly", headers={"Retry-After": "1"})
        if fp != request_fingerprint:
            raise IdempotencyKeyReused("This Idempotency-Key was used for a different request")
        if status is None or body is None:
            raise IdempotencyKeyInFlight("Retry shortly", headers={"Retry-After": "1"})
        return status, orjson.loads(body)

    async def sweep_expired(self) -> int:
        """Delete a batch of expired records; how many went."""
        async with self.engine.connect() as conn:
            result = await conn.execute(_SWEEP, {"batch": SWEEP_BATCH})
        return int(result.rowcount)

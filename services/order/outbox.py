"""The outbox relay: committed order events go to the events stream, and again after Redis lost them."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.contracts import EventType, encode_event
from services.common.resources import RedisClient, redis_run_id
from services.order.config import OrderSettings
from services.order.models import OutboxEvent
from services.order.states import utcnow

log = logging.getLogger("order.outbox")

RELAY_LOCK = 727_102  # one outbox relay at a time keeps events in commit order
REPUBLISHED = Counter("order_outbox_republished_total", "Outbox events sent again after Redis restarted or lost data")


def marker_key(stream: str) -> str:
    """The key beside the events stream (its hash tag kept: the same master) that names the Redis run the relay
    last published to."""
    return f"{stream}:relay-run"


class OutboxRelay:
    """Publishes outbox events oldest first, at least once, including across a Redis that lost its last writes."""

    def __init__(
        self, *, settings: OrderSettings, redis: RedisClient, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sessions = sessions

    async def relay(self) -> int:
        """One pass: re-arm recently published events if Redis restarted or lost data, then publish a batch."""
        async with self.sessions.begin() as session:
            if not await session.scalar(text(f"SELECT pg_try_advisory_xact_lock({RELAY_LOCK})")):
                return 0  # another replica is relaying
            run_id = await self._redis_run_changed()
            if run_id is not None:
                await self._republish_recent(session)
            published = await self._publish_batch(session)
        if run_id is not None:
            # Only once the re-armed events are committed: a crash before this line re-arms them again.
            await self.redis.set(marker_key(self.settings.events_stream), run_id)
        return published

    async def _redis_run_changed(self) -> str | None:
        """The current Redis run id when it differs from the marker (restarted, or the marker is gone).

        The run of the server holding the stream and its marker: on a cluster the master of their slot.
        """
        marker_name = marker_key(self.settings.events_stream)
        run_id = await redis_run_id(self.redis, marker_name)
        marker = await self.redis.get(marker_name)
        seen = marker.decode() if isinstance(marker, bytes) else marker
        return None if seen == run_id else run_id

    async def _republish_recent(self, session: AsyncSession) -> None:
        """Mark unpublished every event published within the window before the last publish."""
        # Anchored on the last publish, not on now: while Redis is down nothing is published, so the
        # events it may have lost are the last ones sent before it went, however long it stayed down.
        last = await session.scalar(select(func.max(OutboxEvent.published_at)))
        if last is None:
            return
        since = last - timedelta(seconds=self.settings.relay_republish_seconds)
        result: Any = await session.execute(
            update(OutboxEvent).where(OutboxEvent.published_at >= since).values(published_at=None)
        )
        count = int(result.rowcount or 0)
        REPUBLISHED.inc(count)
        log.warning("Redis restarted or lost data: %d outbox events published since %s go out again", count, since)

    async def _publish_batch(self, session: AsyncSession) -> int:
        rows = (
            await session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.published_at.is_(None))
                .order_by(OutboxEvent.id)
                .limit(self.settings.relay_batch)
            )
        ).all()
        if not rows:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.xadd(
                    self.settings.events_stream,
                    encode_event(EventType(row.event_type), {**row.payload, "event_id": row.id}),  # type: ignore[arg-type]
                )
            await pipe.execute()
        await session.execute(
            update(OutboxEvent).where(OutboxEvent.id.in_([r.id for r in rows])).values(published_at=utcnow())
        )
        return len(rows)

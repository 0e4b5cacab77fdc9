"""The purchase-event consumers: one consumer-group reader per sale stream that flashsale registers."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from services.common.streams import Entry, StreamConsumer, decode_event, group_backlog
from services.order.service import OrderService

log = logging.getLogger("order.events")

GROUP = "order"


class PurchaseIngest:
    """Follows `fs:streams` and keeps one consumer per purchase stream; each event becomes one order."""

    IDLE_SECONDS = 60.0

    def __init__(self, service: OrderService, consumer_name: str) -> None:
        self.service = service
        self.consumer_name = consumer_name
        self._consumers: dict[str, tuple[StreamConsumer, asyncio.Task[None]]] = {}

    async def _one(self, entry_id: str, fields: dict[str, Any]) -> None:
        await self.service.create_orders([decode_event(fields)])

    async def _batch(self, entries: list[Entry]) -> None:
        await self.service.create_orders([decode_event(fields) for _id, fields in entries])

    def consumer_for(self, stream: str) -> StreamConsumer:
        """A consumer of one purchase stream (also used by tests and the benchmark)."""
        settings = self.service.settings
        return StreamConsumer(
            redis=self.service.redis,
            stream=stream,
            group=GROUP,
            consumer=self.consumer_name,
            handler=self._one,
            batch_handler=self._batch,
            batch=settings.consumer_batch,
            block_ms=500,
            claim_idle_ms=settings.consumer_claim_idle_ms,
        )

    async def sync(self) -> None:
        """Follow the purchase streams that have work for the group; let go of drained, idle ones.

        Every sale ever run stays listed in the registry; following each forever would hold one
        blocking Redis connection per sale per replica.
        """
        registry: set[str] = await self.service.redis.smembers(  # type: ignore[assignment]
            self.service.settings.purchase_stream_registry
        )
        now = time.monotonic()
        idle = [s for s, (c, _t) in self._consumers.items() if now - c.last_active > self.IDLE_SECONDS]
        waiting = [s for s in registry if s not in self._consumers]
        backlog = await group_backlog(self.service.redis, idle + waiting, GROUP) if idle or waiting else {}
        for stream in idle:
            if not backlog.get(stream):
                consumer, task = self._consumers.pop(stream)
                consumer.stop()
                task.cancel()
        for stream in waiting:
            if backlog.get(stream):
                consumer = self.consumer_for(stream)
                self._consumers[stream] = (consumer, asyncio.create_task(consumer.run()))

    @property
    def followed(self) -> set[str]:
        """Streams with a running consumer."""
        return set(self._consumers)

    async def aclose(self) -> None:
        """Stop every consumer and wait briefly for them."""
        tasks = []
        for consumer, task in self._consumers.values():
            consumer.stop()
            task.cancel()
            tasks.append(task)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self._consumers.clear()

"""The purchase-event consumers: one consumer-group reader per sale stream that flashsale registers."""

from __future__ import annotations

import logging
from typing import Any

from services.common.contracts import ConsumerGroup, decode_event
from services.common.streams import Entry, RegistryFollower, StreamConsumer
from services.order.service import OrderService

log = logging.getLogger("order.events")

GROUP = ConsumerGroup.ORDER


class PurchaseIngest:
    """Follows the purchase streams listed in `fs:streams`; each event becomes one order."""

    def __init__(self, service: OrderService, consumer_name: str) -> None:
        self.service = service
        self.consumer_name = consumer_name
        self.follower = RegistryFollower(
            service.redis,
            registry=service.settings.purchase_stream_registry,
            group=GROUP,
            make_consumer=self.consumer_for,
        )

    async def _one(self, entry_id: str, fields: dict[str, Any]) -> None:
        await self.service.creation.create_orders([decode_event(fields)])

    async def _batch(self, entries: list[Entry]) -> None:
        await self.service.creation.create_orders([decode_event(fields) for _id, fields in entries])

    def consumer_for(self, stream: str) -> StreamConsumer:
        """A consumer of one purchase stream (also used by the benchmark)."""
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
        """Follow the purchase streams with work; let go of drained ones."""
        await self.follower.sync()

    @property
    def followed(self) -> set[str]:
        """Purchase streams followed right now."""
        return self.follower.followed

    async def aclose(self) -> None:
        """Stop every consumer."""
        await self.follower.aclose()

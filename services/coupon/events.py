"""Stream work of the coupon service: claims into wallets, and order events into coupon states."""

from __future__ import annotations

from typing import Any

from services.common.contracts import CLAIM_STREAM_REGISTRY, ConsumerGroup, EventType, decode_event
from services.common.streams import Entry, RegistryFollower, StreamConsumer
from services.coupon.orders import order_records
from services.coupon.recovery import EVENT_OF_ORDER_STATE
from services.coupon.service import CouponService

WALLET_GROUP = ConsumerGroup.COUPON_WALLET
ORDER_GROUP = ConsumerGroup.COUPON


class ClaimPersistence:
    """Follows every template's claim stream: a claim whose wallet row was not written is written here."""

    def __init__(self, service: CouponService, consumer_name: str) -> None:
        self.service = service
        self.consumer_name = consumer_name
        self.follower = RegistryFollower(
            service.redis, registry=CLAIM_STREAM_REGISTRY, group=WALLET_GROUP, make_consumer=self._consumer
        )

    async def _one(self, entry_id: str, fields: dict[str, Any]) -> None:
        await self.service._persist_claims([decode_event(fields)])

    async def _batch(self, entries: list[Entry]) -> None:
        await self.service._persist_claims([decode_event(f) for _id, f in entries])

    def _consumer(self, stream: str) -> StreamConsumer:
        return StreamConsumer(
            redis=self.service.redis,
            stream=stream,
            group=WALLET_GROUP,
            consumer=self.consumer_name,
            handler=self._one,
            batch_handler=self._batch,
            batch=500,
            block_ms=500,
        )


def order_events_consumer(service: CouponService, consumer_name: str) -> StreamConsumer:
    """Locked coupons become used when their order is paid, available again when it is cancelled or expires."""

    async def handle(entry_id: str, fields: dict[str, Any]) -> None:
        event = decode_event(fields)
        if event.get("type") == EventType.ORDER_COUPONS_RELEASED:
            decided = await on_order_coupons_released(service, event)
            if decided is None:
                return
            event = decided
        await service.on_order_event(event)

    return StreamConsumer(
        redis=service.redis,
        stream=service.settings.order_events_stream,
        group=ORDER_GROUP,
        consumer=consumer_name,
        handler=handle,
        claim_idle_ms=10_000,
    )


async def on_order_coupons_released(service: CouponService, event: dict[str, Any]) -> dict[str, Any] | None:
    """The event the order record stands for (None: nothing to do); it frees coupons only of a closed order.

    The order service sends it when an order closed while its coupon price was pending, but also, when two
    replicas priced one order and a payment landed in between, for an order that was paid. Freeing those
    coupons would let them be used again, and if the `order.paid` event was lost with Redis they would stay
    free; so the order's record decides (a paid order uses them, an unpaid one keeps them locked).
    """
    order = (await order_records(service.settings, [str(event["order_id"])])).get(str(event["order_id"]))
    if order is None:
        return event
    decided = EVENT_OF_ORDER_STATE.get(order.state)
    if decided is None:  # still awaiting payment: its own events will settle the coupons
        return None
    if decided == EventType.ORDER_PAID:
        return {**event, "type": decided, "user_id": order.user_id}
    return event

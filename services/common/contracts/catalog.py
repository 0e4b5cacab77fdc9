"""Which stream carries which events, who writes and who reads it: the table docs/events.md describes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from services.common.contracts import events as ev
from services.common.contracts.events import EventType
from services.common.contracts.keys import (
    ALERTS_STREAM,
    CLAIM_STREAM_REGISTRY,
    ORDER_EVENTS_STREAM,
    PURCHASE_STREAM_REGISTRY,
    ConsumerGroup,
)

ORDER_STATE_EVENTS = (
    EventType.ORDER_CANCELLED,
    EventType.ORDER_EXPIRED,
    EventType.ORDER_REFUND_PENDING,
    EventType.ORDER_REFUNDED,
    EventType.ORDER_FULFILLED,
    # No service sends these two today; flashsale releases the reservation on them as on a cancel.
    EventType.ORDER_FAILED,
    EventType.RESERVATION_RELEASED,
)


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One stream (or family of per-sale, per-template streams) and the payload of each type it carries.

    A type may carry several payloads on one stream (a `stock.low` on `alerts` is a sale's or a SKU's);
    an entry is valid when it is exactly one of them.
    """

    name: str  # the key, or its pattern with <placeholders>
    producers: tuple[str, ...]
    groups: tuple[ConsumerGroup, ...]
    payloads: Mapping[EventType, tuple[Any, ...]]
    registry: str | None = None  # the set that lists every stream of the family
    readers: tuple[str, ...] = field(default=())  # who reads it without a consumer group (XRANGE)


PURCHASES = StreamSpec(
    name="{fs:<sale_id>}:events",
    producers=("flashsale purchase.lua",),
    groups=(ConsumerGroup.ORDER,),
    payloads=MappingProxyType({EventType.PURCHASE_RESERVED: (ev.PurchaseReserved,)}),
    registry=PURCHASE_STREAM_REGISTRY,
)
SALE_ALERTS = StreamSpec(
    name="{fs:<sale_id>}:alerts",
    producers=("flashsale purchase.lua", "flashsale reconciliation"),
    groups=(ConsumerGroup.FLASHSALE_ALERTS,),
    payloads=MappingProxyType(
        {
            EventType.STOCK_LOW: (ev.SaleStockLow,),
            EventType.SALE_SOLD_OUT: (ev.SaleSoldOut,),
            EventType.RECONCILIATION_DRIFT: (ev.ReconciliationDrift,),
        }
    ),
    readers=("flashsale GET /admin/sales/{id}/alerts",),
)
ALERTS = StreamSpec(
    name=ALERTS_STREAM,
    producers=("flashsale alert relay", "inventory alert outbox relay"),
    groups=(),
    payloads=MappingProxyType(
        {
            EventType.STOCK_LOW: (ev.SaleStockLowAlert, ev.SkuStockLow),
            EventType.SALE_SOLD_OUT: (ev.SaleSoldOutAlert,),
            EventType.RECONCILIATION_DRIFT: (ev.ReconciliationDriftAlert,),
            EventType.STOCK_REPLENISH_REMINDER: (ev.StockReplenishReminder,),
        }
    ),
    readers=("ops tools",),
)
COUPON_CLAIMS = StreamSpec(
    name="{cp:<template_id>}:claims",
    producers=("coupon claim.lua", "coupon count_again.lua"),
    groups=(ConsumerGroup.COUPON_WALLET,),
    payloads=MappingProxyType({EventType.COUPON_CLAIMED: (ev.CouponClaimed,)}),
    registry=CLAIM_STREAM_REGISTRY,
    readers=("coupon recovery after a Redis restart",),
)
ORDER_EVENTS = StreamSpec(
    name=ORDER_EVENTS_STREAM,
    producers=("order outbox relay",),
    groups=(ConsumerGroup.FLASHSALE, ConsumerGroup.COUPON, ConsumerGroup.ORDER_REMINDERS),
    payloads=MappingProxyType(
        {
            EventType.ORDER_CREATED: (ev.OrderCreated,),
            EventType.ORDER_PAYMENT_REMINDER: (ev.OrderPaymentReminder,),
            EventType.ORDER_PAID: (ev.OrderPaid,),
            **{event: (ev.OrderStateChanged,) for event in ORDER_STATE_EVENTS},
            EventType.ORDER_COUPONS_RELEASED: (ev.OrderCouponsReleased,),
        }
    ),
)

STREAMS: tuple[StreamSpec, ...] = (PURCHASES, SALE_ALERTS, ALERTS, COUPON_CLAIMS, ORDER_EVENTS)

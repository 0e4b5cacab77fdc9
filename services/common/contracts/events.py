"""Every event type the services exchange, the `data` each one carries, and its version.

Payloads are TypedDicts rather than pydantic models: a consumer's hot path (thousands of purchase events a
second into the order service) stays one `orjson.loads` per entry with no object built per event, mypy
still knows every field by name, and pydantic validates the very same declarations wherever a check is
worth its cost (`validate_entry`, the contract tests). Each is configured `extra="forbid", strict=True`, so
a producer that writes an undocumented field, or a string where an integer belongs, fails those checks.

Consumers read only the fields they need and ignore the rest, so adding an optional field keeps the
version; renaming, removing or retyping a field, or changing what it means, is a new version.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, NotRequired

from pydantic import ConfigDict, with_config

# pydantic validates only typing_extensions' TypedDict before Python 3.12.
from typing_extensions import TypedDict


class EventType(enum.StrEnum):
    """The `type` field of a stream entry (wire values: never change one)."""

    PURCHASE_RESERVED = "purchase.reserved"
    STOCK_LOW = "stock.low"
    SALE_SOLD_OUT = "sale.sold_out"
    RECONCILIATION_DRIFT = "reconciliation.drift"
    STOCK_REPLENISH_REMINDER = "stock.replenish_reminder"
    COUPON_CLAIMED = "coupon.claimed"
    ORDER_CREATED = "order.created"
    ORDER_PAID = "order.paid"
    ORDER_CANCELLED = "order.cancelled"
    ORDER_EXPIRED = "order.expired"
    ORDER_REFUND_PENDING = "order.refund_pending"
    ORDER_REFUNDED = "order.refunded"
    ORDER_FULFILLED = "order.fulfilled"
    ORDER_COUPONS_RELEASED = "order.coupons_released"
    ORDER_PAYMENT_REMINDER = "order.payment_reminder"
    # Accepted by flashsale as a release (a reservation whose order failed), though no service sends them today.
    ORDER_FAILED = "order.failed"
    RESERVATION_RELEASED = "reservation.released"


# The `v` a producer writes with each type. All are at their first version.
EVENT_VERSIONS: Final[Mapping[EventType, int]] = MappingProxyType({event: 1 for event in EventType})


@with_config(ConfigDict(extra="forbid", strict=True))
class Payload(TypedDict):
    """The base of every payload: no undocumented field, no coerced type."""


# ---------------------------------------------------------------- purchase streams {fs:<sale id>}:events


class PurchaseReserved(Payload):
    """A purchase the script accepted: stock taken, reservation recorded (written by purchase.lua)."""

    reservation_id: str  # 32 hex characters, unique: the order's idempotency key
    sale_id: int
    user_id: str
    sku: str
    quantity: int
    unit_price: int  # minor units
    currency: str  # ISO 4217
    reserved_at: str  # ISO 8601, the flashsale replica's clock (informational)
    reserved_at_ms: int  # Redis time, epoch milliseconds
    coupon_ids: NotRequired[list[str]]  # only when the buyer named coupons
    member: NotRequired[bool]  # with coupon_ids: the buyer has the member role
    traceparent: NotRequired[str]  # W3C trace context of the purchase's span, only while tracing is on


# ---------------------------------------------------------------- sale alert streams {fs:<sale id>}:alerts


class SaleStockLow(Payload):
    """A purchase took the sale's remaining stock to or below its low-stock threshold (once per crossing)."""

    sale_id: int
    remaining: int
    threshold: int  # units
    quantity: int
    paused: int  # 1 when the policy alert_and_pause paused the sale, else 0
    at_ms: int  # Redis time


class SaleSoldOut(Payload):
    """A purchase took the last unit (once per sell-out)."""

    sale_id: int
    quantity: int
    at_ms: int


class ReconciliationDrift(Payload):
    """The periodic reconciliation found that Redis could sell more units than the sale has."""

    sale_id: int
    sku: str
    drift: int  # units above the sale's quantity
    problems: list[str]
    at: str  # ISO 8601


# ---------------------------------------------------------------- the global alerts stream (and webhook bodies)


class AlertHeader(Payload):
    """What every entry of `alerts` carries besides its alert: its id for deduplication, type and version."""

    id: str  # flashsale: "<sale id>-<entry id of the sale alert stream>"; inventory: "inventory:<outbox id>"
    type: str
    v: int


class SaleStockLowAlert(SaleStockLow, AlertHeader):
    """A sale's low-stock alert as relayed to `alerts` and POSTed to the alert webhooks."""


class SaleSoldOutAlert(SaleSoldOut, AlertHeader):
    """A sale's sold-out alert as relayed to `alerts` and POSTed to the alert webhooks."""


class ReconciliationDriftAlert(ReconciliationDrift, AlertHeader):
    """A sale's drift alert as relayed to `alerts` and POSTed to the alert webhooks."""


class InventoryAlertHeader(AlertHeader):
    """Inventory alerts name their source (flashsale's do not): a `stock.low` of a SKU, not of a sale."""

    source: Literal["inventory"]


class SkuStockLow(InventoryAlertHeader):
    """A warehouse SKU's available stock crossed its low-stock threshold (once per crossing)."""

    sku: str
    available: int
    on_hand: int
    threshold: int  # units
    threshold_kind: str  # absolute | percent
    threshold_value: int  # as configured: units, or percent of on_hand
    replenish: int  # units that bring available back to twice the threshold
    reminder_id: int
    at: str


class StockReplenishReminder(InventoryAlertHeader):
    """A SKU is still below its threshold with no restock since the alert; repeated until resolved."""

    sku: str
    reminder_id: int
    available: int
    on_hand: int
    threshold: int
    suggested_quantity: int
    open_since: str
    reminders_sent: int
    at: str


# ---------------------------------------------------------------- claim streams {cp:<template id>}:claims


class CouponClaimed(Payload):
    """A claim the script accepted; the wallet consumer writes it into the buyer's wallet if not there yet."""

    coupon_id: str
    template_id: int
    user_id: str
    claimed_at_ms: int  # Redis time


# ---------------------------------------------------------------- the order events stream {orders}:events


class OrderEvent(Payload):
    """Every order event carries the outbox row id it was published from (the same on a republish)."""

    order_id: str
    user_id: str
    event_id: int


class OrderCreated(OrderEvent):
    """An order was created from a purchase event."""

    reservation_id: str
    sale_id: int
    total: int  # minor units, before coupons
    currency: str
    deadline_at: str  # ISO 8601: unpaid by then, it expires


class OrderStateChanged(OrderEvent):
    """An order moved to the state its type names (cancelled, expired, refund_pending, refunded, fulfilled)."""

    reservation_id: str
    sale_id: int
    state: str
    total: int
    currency: str
    at: str
    reason: NotRequired[str]  # e.g. cancelled_by_buyer, payment_timeout, refunded_by_ops


class OrderPaid(OrderStateChanged):
    """An order was paid; `provider` names the provider that charged it (absent when a claim check found it)."""

    provider: NotRequired[str]


class OrderPaymentReminder(OrderEvent):
    """An order is still unpaid a configured time before its deadline: remind the buyer (once per order)."""

    reservation_id: str
    sale_id: int
    total: int  # minor units, what the buyer pays
    currency: str
    deadline_at: str  # ISO 8601: unpaid by then, the order expires and its units are released
    reminded_at: str  # ISO 8601


class OrderCouponsReleased(OrderEvent):
    """An order closed while its coupons were being priced: free those its record says it did not use."""

    at: str

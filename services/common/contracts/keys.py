"""The Redis names two services share: streams, stream registries, consumer groups.

A per-sale or per-template stream carries its owner's hash tag (`{fs:<sale id>}`, `{cp:<template id>}`):
the script that appends to it touches the sale's or template's other keys in the same call, so all of them
must sit on one Redis Cluster slot. The owners' store modules build those other keys with the same tags.
A global name carries its owner's service tag (`{orders}`, `{fs}`, `{cp}`), so that the keys beside it (its
dead letters, the relay's marker, the service's other global keys) share its slot and the master that holds
them is the one asked about them. `alerts` is one key that no command takes with another: it needs no tag
(docs/scaling.md lists every family and its slot).
"""

from __future__ import annotations

import enum
from typing import Final

# The order service publishes every order event here (settings ORDER_EVENTS_STREAM, FLASHSALE_ORDER_EVENTS_STREAM,
# COUPON_ORDER_EVENTS_STREAM name it for each side).
ORDER_EVENTS_STREAM: Final = "{orders}:events"
# Stock alerts of flashsale (relayed from each sale) and inventory, for ops tools (FLASHSALE_/INVENTORY_ALERTS_STREAM).
ALERTS_STREAM: Final = "alerts"
# Set of every sale's purchase stream, written before the sale can sell; the order service follows each one.
PURCHASE_STREAM_REGISTRY: Final = "{fs}:streams"
# Set of every coupon template's claim stream; the coupon service's wallet consumer follows each one.
CLAIM_STREAM_REGISTRY: Final = "{cp}:streams"


def sale_tag(sale_id: int) -> str:
    """The hash tag of every key of one sale."""
    return f"{{fs:{sale_id}}}"


def purchase_stream(sale_id: int) -> str:
    """Purchase events of one sale, appended by the purchase script, read by the order service."""
    return f"{sale_tag(sale_id)}:events"


def sale_alert_stream(sale_id: int) -> str:
    """Low-stock, sold-out and drift alerts of one sale, relayed by flashsale to `alerts`."""
    return f"{sale_tag(sale_id)}:alerts"


def template_tag(template_id: int) -> str:
    """The hash tag of every key of one coupon template."""
    return f"{{cp:{template_id}}}"


def claim_stream(template_id: int) -> str:
    """Claims of one coupon template, appended by the claim script, persisted into wallets."""
    return f"{template_tag(template_id)}:claims"


def dead_letter_stream(stream: str) -> str:
    """Where a consumer group puts an entry of `stream` its handler failed on too many times (the stream's
    hash tag kept: `{orders}:events:dead`, `{fs:<sale id>}:events:dead`)."""
    return f"{stream}:dead"


class ConsumerGroup(enum.StrEnum):
    """Consumer group names; a producer that trims its stream must know who still has to read it."""

    ORDER = "order"  # purchase streams -> orders
    FLASHSALE = "flashsale"  # {orders}:events -> reservations confirmed or released
    COUPON = "coupon"  # {orders}:events -> coupons used or freed
    FLASHSALE_ALERTS = "flashsale-alerts"  # sale alert streams -> alerts, webhooks, metric
    COUPON_WALLET = "coupon-wallet"  # claim streams -> wallets
    ORDER_REMINDERS = "order-reminders"  # orders:events -> payment reminder webhooks (when configured)

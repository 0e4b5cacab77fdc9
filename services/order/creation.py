"""Orders from purchase events: one order per reservation, created in one transaction per batch
(unnest() inserts: one prepared statement per table however large the batch), each with its
`order.created` outbox event; orders naming coupons are then priced by pricing.py."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from opentelemetry.trace import Span, SpanKind, Tracer
from prometheus_client import Counter
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common import tracing
from services.common.contracts import EventType
from services.order.config import OrderSettings
from services.order.metrics import count_created
from services.order.models import OrderState
from services.order.pricing import CouponPricing
from services.order.states import utcnow

ORDERS_CREATED = Counter("order_orders_created_total", "Orders created from purchase events")
ORDER_COLUMNS = {
    "id": "text",
    "reservation_id": "text",
    "sale_id": "bigint",
    "user_id": "text",
    "state": "text",
    "currency": "text",
    "subtotal": "bigint",
    "discount": "bigint",
    "total": "bigint",
    "reserved_at": "timestamptz",
    "created_at": "timestamptz",
    "deadline_at": "timestamptz",
    "coupon_ids": "jsonb",
    "member": "boolean",
    "pricing": "text",
    "traceparent": "text",
}
LINE_COLUMNS = {
    "order_id": "text",
    "sku": "text",
    "sale_id": "bigint",
    "unit_price": "bigint",
    "quantity": "int",
    "amount": "bigint",
}
OUTBOX_COLUMNS = {"event_type": "text", "payload": "text"}


def _unnest_insert(table: str, columns: dict[str, str], suffix: str = "") -> TextClause:
    names = ", ".join(columns)
    arrays = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in columns.items())
    return text(f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}){suffix}")


INSERT_ORDERS = _unnest_insert(
    "orders", ORDER_COLUMNS, " ON CONFLICT (reservation_id) DO NOTHING RETURNING id, reservation_id"
)
INSERT_LINES = _unnest_insert("order_lines", LINE_COLUMNS)
INSERT_OUTBOX = text(
    "INSERT INTO outbox (event_type, payload) SELECT e, CAST(p AS jsonb) "
    "FROM unnest(CAST(:event_type AS text[]), CAST(:payload AS text[])) AS t(e, p)"
)


def _columns(rows: list[dict[str, Any]], columns: dict[str, str]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in columns}


REQUIRED_EVENT_FIELDS = ("reservation_id", "sale_id", "user_id", "sku", "quantity", "unit_price")


def new_order_id() -> str:
    """A random, unguessable order id."""
    return os.urandom(12).hex()


class ParsedPurchase:
    """A purchase event checked for what an order needs."""

    __slots__ = (
        "coupon_ids",
        "currency",
        "member",
        "quantity",
        "reservation_id",
        "reserved_at",
        "reserved_at_ms",
        "sale_id",
        "sku",
        "traceparent",
        "unit_price",
        "user_id",
    )

    def __init__(self, event: dict[str, Any]) -> None:
        missing = [f for f in REQUIRED_EVENT_FIELDS if event.get(f) in (None, "")]
        if missing:
            raise ValueError(f"purchase event without {', '.join(missing)}")
        self.reservation_id = str(event["reservation_id"])[:64]
        self.sale_id = int(event["sale_id"])
        self.user_id = str(event["user_id"])[:128]
        self.sku = str(event["sku"])[:64]
        self.quantity = int(event["quantity"])
        self.unit_price = int(event["unit_price"])
        self.currency = str(event.get("currency") or "USD")[:3]
        if self.quantity < 1 or self.unit_price < 0:
            raise ValueError("purchase event with a bad quantity or price")
        coupons = event.get("coupon_ids") or []
        if not isinstance(coupons, list) or len(coupons) > 5 or not all(isinstance(c, str) for c in coupons):
            raise ValueError("purchase event with malformed coupon_ids")
        self.coupon_ids = [c[:32] for c in coupons]
        self.member = bool(event.get("member"))
        reserved = event.get("reserved_at")
        self.reserved_at = datetime.fromisoformat(reserved) if isinstance(reserved, str) else None
        reserved_ms = event.get("reserved_at_ms")
        self.reserved_at_ms = int(reserved_ms) if isinstance(reserved_ms, int | str) and reserved_ms else None
        self.traceparent = tracing.valid_traceparent(event.get("traceparent"))


def _order_rows(purchases: Iterable[ParsedPurchase], now: datetime, deadline: datetime) -> list[dict[str, Any]]:
    """The orders rows of new purchases, unpaid until the deadline; priced now unless they name coupons."""
    rows = []
    for p in purchases:
        amount = p.unit_price * p.quantity
        rows.append(
            {
                "id": new_order_id(),
                "reservation_id": p.reservation_id,
                "sale_id": p.sale_id,
                "user_id": p.user_id,
                "state": OrderState.PENDING_PAYMENT.value,
                "currency": p.currency,
                "subtotal": amount,
                "discount": 0,
                "total": amount,
                "reserved_at": p.reserved_at,
                "created_at": now,
                "deadline_at": deadline,
                "coupon_ids": orjson.dumps(p.coupon_ids).decode(),
                "member": p.member,
                "pricing": "coupons_pending" if p.coupon_ids else "final",
                "traceparent": p.traceparent,
            }
        )
    return rows


def _lines_and_events(
    created: Sequence[Sequence[Any]], by_rid: dict[str, ParsedPurchase], deadline: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The order line and the `order.created` outbox event of each order the insert created."""
    lines = []
    outbox = []
    for order_id, rid in created:
        p = by_rid[rid]
        amount = p.unit_price * p.quantity
        lines.append(
            {
                "order_id": order_id,
                "sku": p.sku,
                "sale_id": p.sale_id,
                "unit_price": p.unit_price,
                "quantity": p.quantity,
                "amount": amount,
            }
        )
        payload = {
            "order_id": order_id,
            "reservation_id": rid,
            "sale_id": p.sale_id,
            "user_id": p.user_id,
            "total": amount,
            "currency": p.currency,
            "deadline_at": deadline.isoformat(),
        }
        outbox.append({"event_type": EventType.ORDER_CREATED, "payload": orjson.dumps(payload).decode()})
    return lines, outbox


class OrderCreation:
    """Turns a batch of purchase events into orders; a repeated reservation is ignored, never doubled."""

    def __init__(
        self, *, settings: OrderSettings, sessions: async_sessionmaker[AsyncSession], pricing: CouponPricing
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.pricing = pricing

    async def create_orders(self, events: Sequence[dict[str, Any]]) -> int:
        """Create one order per reservation, in one transaction; repeats are ignored. Returns new orders."""
        parsed = [ParsedPurchase(e) for e in events]  # a bad event fails the batch; the consumer isolates it
        if not parsed:
            return 0
        now = utcnow()
        deadline = now + timedelta(seconds=self.settings.payment_deadline_seconds)
        by_rid: dict[str, ParsedPurchase] = {}
        for p in parsed:
            by_rid.setdefault(p.reservation_id, p)  # a reservation repeated in the batch: its first event
        tracer = tracing.TRACER
        spans = _creation_spans(tracer, by_rid.values()) if tracer is not None else {}
        try:
            created = await self._insert(by_rid, now, deadline)
        finally:
            for rid, span in spans.items():
                span.set_attribute("order.created", rid in created)
                span.end()
        if not created:
            return 0
        ORDERS_CREATED.inc(len(created))
        count_created(((by_rid[rid].sale_id, by_rid[rid].reserved_at_ms) for rid in created), int(time.time() * 1000))
        with_coupons = [order_id for rid, order_id in created.items() if by_rid[rid].coupon_ids]
        if with_coupons and self.pricing.coupons is not None:
            await self.pricing.price_with_coupons(order_ids=with_coupons)
        return len(created)

    async def _insert(self, by_rid: dict[str, ParsedPurchase], now: datetime, deadline: datetime) -> dict[str, str]:
        """Insert the orders new to the database with their lines and events; reservation id -> new order id."""
        rows = _order_rows(by_rid.values(), now, deadline)
        async with self.sessions.begin() as session:
            # unnest() over column arrays: one prepared statement per table, however large the batch.
            created = (await session.execute(INSERT_ORDERS, _columns(rows, ORDER_COLUMNS))).all()
            if not created:
                return {}
            lines, outbox = _lines_and_events(created, by_rid, deadline)
            await session.execute(INSERT_LINES, _columns(lines, LINE_COLUMNS))
            await session.execute(INSERT_OUTBOX, _columns(outbox, OUTBOX_COLUMNS))
        return {rid: order_id for order_id, rid in created}


def _creation_spans(tracer: Tracer, purchases: Iterable[ParsedPurchase]) -> dict[str, Span]:
    """One order-creation span per purchase that carries a trace, its parent the purchase's span.

    A child rather than a link: the hop through the stream is the purchase's own next step, and a parent keeps
    the purchase's sampling decision (an unsampled purchase makes no span here either). The order keeps the
    span's traceparent, so its charge is a child of it in turn.
    """
    spans = {}
    for p in purchases:
        if p.traceparent is None:
            continue
        span, p.traceparent = tracing.begin(tracer, "order create", p.traceparent, SpanKind.CONSUMER)
        if span is not None:  # None: not sampled, and the order keeps the purchase's context as it came
            span.set_attributes({"order.reservation_id": p.reservation_id, "flashsale.sale_id": p.sale_id})
            spans[p.reservation_id] = span
    return spans

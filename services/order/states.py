"""The order state machine: which state may follow which, and one move that keeps its history and its event."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.contracts import EventType
from services.order import errors
from services.order.models import Order, OrderState, OrderTransition, OutboxEvent

TRANSITIONS_TOTAL = Counter("order_transitions_total", "Order state changes", ["to"])

# Which state may follow which.
ALLOWED: dict[OrderState, set[OrderState]] = {
    OrderState.PENDING_PAYMENT: {
        OrderState.PAID,
        OrderState.CANCELLED,
        OrderState.EXPIRED,
    },
    OrderState.PAID: {OrderState.FULFILLED, OrderState.REFUNDED},
    OrderState.EXPIRED: {OrderState.REFUND_PENDING},
    OrderState.CANCELLED: {OrderState.REFUND_PENDING},
    OrderState.REFUND_PENDING: {OrderState.REFUNDED},
    OrderState.FULFILLED: set(),
    OrderState.REFUNDED: set(),
}
EVENT_OF: dict[OrderState, EventType] = {
    OrderState.PAID: EventType.ORDER_PAID,
    OrderState.CANCELLED: EventType.ORDER_CANCELLED,
    OrderState.EXPIRED: EventType.ORDER_EXPIRED,
    OrderState.REFUNDED: EventType.ORDER_REFUNDED,
    OrderState.REFUND_PENDING: EventType.ORDER_REFUND_PENDING,
    OrderState.FULFILLED: EventType.ORDER_FULFILLED,
}
CLOSING = frozenset({OrderState.CANCELLED, OrderState.EXPIRED, OrderState.REFUNDED})

# Actors that are not a person: the jobs that move orders on their own.
SWEEPER = "system:expiry-sweeper"
REFUND_JOB = "system:refunds"
CLAIM_CHECK = "system:payment-claims"


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def event_payload(order: Order, **extra: Any) -> dict[str, Any]:
    """The payload of an order event (versioned JSON through the outbox)."""
    return {
        "order_id": order.id,
        "reservation_id": order.reservation_id,
        "sale_id": order.sale_id,
        "user_id": order.user_id,
        "state": order.state,
        "total": order.total,
        "currency": order.currency,
        "at": utcnow().isoformat(),
        **extra,
    }


def move(
    session: AsyncSession,
    order: Order,
    target: OrderState,
    *,
    actor: str,
    reason: str | None = None,
    **event_extra: Any,
) -> None:
    """Move a locked order to `target`: check the step, keep it in the history, queue its event."""
    current = OrderState(order.state)
    if target not in ALLOWED[current]:
        raise errors.InvalidOrderState(
            f"An order that is {current.value} cannot become {target.value}",
            extra={"state": current.value},
        )
    now = utcnow()
    order.state = target.value
    if target == OrderState.PAID:
        order.paid_at = now
    elif target in CLOSING and order.closed_at is None:
        order.closed_at = now  # when it first closed: a later refund is in the history, not over this time
    session.add(
        OrderTransition(
            order_id=order.id, from_state=current.value, to_state=target.value, at=now, actor=actor, reason=reason
        )
    )
    if reason is not None:
        event_extra.setdefault("reason", reason)
    session.add(OutboxEvent(event_type=EVENT_OF[target], payload=event_payload(order, **event_extra)))
    TRANSITIONS_TOTAL.labels(target.value).inc()

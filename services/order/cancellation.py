"""Orders closing unpaid: the buyer cancels, ops force-cancel, the sweeper expires what passed its deadline.
The reservation is released through the closing event (states.move writes it to the outbox)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.order import errors
from services.order.models import Order, OrderState
from services.order.schemas import OrderOut
from services.order.states import SWEEPER, move, utcnow
from services.order.views import locked_order, order_view


def close_unpaid(session: AsyncSession, order: Order, *, reason: str, actor: str) -> None:
    """Cancel a locked order, unless a payment of it is in flight (its outcome decides the order)."""
    if order.payment_claimed_at is not None and order.state == OrderState.PENDING_PAYMENT.value:
        raise errors.PaymentInProgress(
            "A payment of this order is in flight; cancel again once it has an outcome",
            headers={"Retry-After": "1"},
            extra={"state": order.state},
        )
    move(session, order, OrderState.CANCELLED, actor=actor, reason=reason)
    order.close_reason = reason


class Cancellations:
    """The buyer's cancel and the payment-timeout sweep."""

    def __init__(self, *, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def cancel(self, *, order_id: str, user_id: str) -> OrderOut:
        """The buyer cancels an unpaid order; the reservation is released through the outbox event."""
        async with self.sessions.begin() as session:
            order = await locked_order(session, order_id, user_id)
            close_unpaid(session, order, reason="cancelled_by_buyer", actor=user_id)
        return order_view(order)

    async def expire_due(self, limit: int = 500) -> int:
        """Expire unpaid orders past their deadline; safe with every replica running it (SKIP LOCKED)."""
        now = utcnow()
        async with self.sessions.begin() as session:
            due = (
                await session.scalars(
                    select(Order)
                    .where(
                        Order.state == OrderState.PENDING_PAYMENT.value,
                        Order.deadline_at <= now,
                        Order.payment_claimed_at.is_(None),  # a payment in flight decides the order
                    )
                    .order_by(Order.deadline_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for order in due:
                order.close_reason = "payment_timeout"
                move(session, order, OrderState.EXPIRED, actor=SWEEPER, reason="payment_timeout")
        return len(due)

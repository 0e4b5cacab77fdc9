"""What ops do with orders and read of them (admin role, audited by the routes): search and inspect,
force-cancel, fulfil and refund, a sale's reservations for flashsale's reconciliation, and the figures
(orders, GMV, payment success rate, time to pay)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from services.order import errors
from services.order.cancellation import close_unpaid
from services.order.models import AuditEntry, Order, OrderState, OrderTransition, PaymentAttempt
from services.order.payments import PaymentRouter
from services.order.schemas import (
    AdminOrderOut,
    OrderOut,
    OrderStats,
    OrderTransitionOut,
    PaymentAttemptOut,
    SaleReservation,
    SaleReservations,
)
from services.order.states import ALLOWED, move
from services.order.views import load_order, locked_order, order_view

# An order refunded by ops was paid first (its units were sold); one refunded after refund_pending
# had expired or been cancelled, so its units went back to the sale.
SALE_RESERVATIONS = text(
    "SELECT o.reservation_id, o.user_id, COALESCE(SUM(l.quantity), 0), "
    "CASE WHEN o.state = 'pending_payment' THEN 'reserved' "
    "WHEN o.state IN ('paid', 'fulfilled') "
    "OR (o.state = 'refunded' AND o.close_reason = 'refunded_by_ops') THEN 'sold' "
    "ELSE 'released' END "
    "FROM orders o LEFT JOIN order_lines l ON l.order_id = o.id "
    "WHERE o.sale_id = :sale_id GROUP BY o.id ORDER BY o.reservation_id"
)


def _snapshot(order: Order) -> dict[str, Any]:
    return {"state": order.state, "total": order.total, "payment_ref": order.payment_ref}


class OrderOperations:
    """The admin flows over orders; each change is audited in the transaction that makes it."""

    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], payments: PaymentRouter) -> None:
        self.sessions = sessions
        self.payments = payments

    async def _audit(
        self,
        session: AsyncSession,
        *,
        actor: str,
        action: str,
        order_id: str | None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> None:
        session.add(AuditEntry(actor=actor, action=action, order_id=order_id, before=before, after=after, note=note))

    async def audit_read(self, *, actor: str, action: str) -> None:
        """Record an admin read."""
        async with self.sessions.begin() as session:
            await self._audit(session, actor=actor, action=action, order_id=None)

    async def admin_search(
        self,
        *,
        sale_id: int | None,
        user_id: str | None,
        state: OrderState | None,
        limit: int,
        offset: int,
        close_reason: str | None = None,
    ) -> list[OrderOut]:
        """Orders by sale, user, state and close reason, newest first."""
        query = select(Order).options(selectinload(Order.lines)).order_by(Order.created_at.desc(), Order.id)
        if close_reason is not None:
            query = query.where(Order.close_reason == close_reason)
        if sale_id is not None:
            query = query.where(Order.sale_id == sale_id)
        if user_id is not None:
            query = query.where(Order.user_id == user_id)
        if state is not None:
            query = query.where(Order.state == state.value)
        async with self.sessions() as session:
            return [order_view(o) for o in await session.scalars(query.limit(limit).offset(offset))]

    async def admin_get(self, order_id: str) -> AdminOrderOut:
        """One order with its payment attempts and its history of transitions."""
        async with self.sessions() as session:
            order = await load_order(session, order_id)
            if order is None:
                raise errors.OrderNotFound(f"No order {order_id}")
            attempts = await session.scalars(
                select(PaymentAttempt).where(PaymentAttempt.order_id == order_id).order_by(PaymentAttempt.id)
            )
            history = await session.scalars(
                select(OrderTransition).where(OrderTransition.order_id == order_id).order_by(OrderTransition.id)
            )
            return AdminOrderOut(
                **order_view(order).model_dump(),
                payment_ref=order.payment_ref,
                payment_claimed_at=order.payment_claimed_at,
                attempts=[PaymentAttemptOut.model_validate(a) for a in attempts],
                history=[OrderTransitionOut.model_validate(t) for t in history],
            )

    async def admin_transition(
        self, *, actor: str, order_id: str, action: str, reason: str = "cancelled_by_ops"
    ) -> OrderOut:
        """force_cancel (unpaid), fulfil (paid) or refund (paid or refund_pending)."""
        async with self.sessions.begin() as session:
            order = await locked_order(session, order_id, None)
            before = _snapshot(order)
            if action == "cancel":
                close_unpaid(session, order, reason=reason, actor=actor)
            elif action == "fulfil":
                move(session, order, OrderState.FULFILLED, actor=actor, reason="fulfilled_by_ops")
            else:
                if OrderState.REFUNDED not in ALLOWED[OrderState(order.state)]:
                    raise errors.InvalidOrderState(f"An order that is {order.state} cannot be refunded")
                if order.payment_ref and order.payment_provider:
                    refunded = await self.payments.refund(
                        provider=order.payment_provider,
                        provider_ref=order.payment_ref,
                        idempotency_key=f"refund:{order.id}",
                    )
                    if not refunded:
                        raise errors.PaymentUnavailable("The provider did not confirm the refund; try again")
                order.close_reason = order.close_reason or "refunded_by_ops"
                move(session, order, OrderState.REFUNDED, actor=actor, reason="refunded_by_ops")
            await self._audit(
                session, actor=actor, action=action, order_id=order_id, before=before, after=_snapshot(order)
            )
        return order_view(order)

    async def sale_reservations(self, *, sale_id: int) -> SaleReservations:
        """Every reservation of a sale with an order, and whether its units are reserved, sold or released."""
        async with self.sessions() as session:
            rows = (await session.execute(SALE_RESERVATIONS, {"sale_id": sale_id})).all()
        reservations = [
            SaleReservation(reservation_id=r[0], user_id=r[1], quantity=int(r[2]), stock=r[3]) for r in rows
        ]
        units = {"reserved": 0, "sold": 0, "released": 0}
        for item in reservations:
            units[item.stock] += item.quantity
        return SaleReservations(
            sale_id=sale_id,
            reserved_units=units["reserved"],
            sold_units=units["sold"],
            released_units=units["released"],
            reservations=reservations,
        )

    async def stats(self, *, sale_id: int | None) -> OrderStats:
        """Orders, paid, GMV, payment success rate and median time to pay."""
        where = [Order.sale_id == sale_id] if sale_id is not None else []
        paid_states = [OrderState.PAID.value, OrderState.FULFILLED.value]
        async with self.sessions() as session:
            by_state = dict(
                (await session.execute(select(Order.state, func.count()).where(*where).group_by(Order.state))).all()
            )
            gmv = await session.scalar(
                select(func.coalesce(func.sum(Order.total), 0)).where(*where, Order.state.in_(paid_states))
            )
            median = await session.scalar(
                select(
                    func.percentile_cont(0.5).within_group(
                        func.extract("epoch", Order.paid_at - Order.created_at).asc()
                    )
                ).where(*where, Order.paid_at.is_not(None))
            )
            attempts_q = select(PaymentAttempt.outcome, func.count()).join(Order, Order.id == PaymentAttempt.order_id)
            attempts = dict((await session.execute(attempts_q.where(*where).group_by(PaymentAttempt.outcome))).all())
        tried = sum(n for outcome, n in attempts.items() if outcome != "circuit_open")
        return OrderStats(
            sale_id=sale_id,
            orders=sum(by_state.values()),
            by_state=by_state,
            paid=sum(by_state.get(s, 0) for s in paid_states),
            gmv=int(gmv or 0),
            payment_attempts=tried,
            payment_success_rate=(attempts.get("succeeded", 0) / tried) if tried else None,
            median_seconds_to_pay=float(median) if median is not None else None,
        )

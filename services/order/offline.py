"""The offline payment channel: when every payment provider is down, ops open it for a sale (audited); the
sale's unpaid orders get a later deadline and instructions for paying offline, ops confirm the payments they
receive (audited, idempotent on the order and its reference), and the channel closes on its own once a
provider takes calls again. Orders it extended keep their later deadline: buyers were told they had it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.order import errors
from services.order.metrics import count_paid
from services.order.models import AuditEntry, OfflineChannel, Order, OrderState, PaymentAttempt
from services.order.payments import SUCCEEDED, PaymentRouter
from services.order.schemas import OfflineChannelOut, OrderOut
from services.order.states import move, utcnow
from services.order.views import locked_order, order_view

log = logging.getLogger("order.offline")

OFFLINE = "offline"  # the payment provider of an order paid through the channel
CHANNEL_JOB = "system:offline-channel"
# A provider answers this read only when it takes calls again (a provider that is down refuses every route).
PROBE_ORDER_ID = "offline-channel-probe"
# Unpaid orders of a sale with an open channel that have no instructions yet (created since it opened).
EXTEND_UNPAID = text(
    "UPDATE orders o SET deadline_at = GREATEST(o.deadline_at, c.deadline_at), "
    "payment_instructions = c.instructions FROM offline_channels c "
    "WHERE c.closed_at IS NULL AND o.sale_id = c.sale_id AND o.state = 'pending_payment' "
    "AND o.payment_instructions IS NULL AND (CAST(:sale_id AS bigint) IS NULL OR c.sale_id = :sale_id)"
)


def _channel(row: OfflineChannel, orders_extended: int = 0) -> OfflineChannelOut:
    return OfflineChannelOut.model_validate(row).model_copy(update={"orders_extended": orders_extended})


class OfflinePayments:
    """Open, close and follow the offline channels; confirm the payments ops received through them."""

    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], payments: PaymentRouter) -> None:
        self.sessions = sessions
        self.payments = payments

    async def providers_back(self) -> bool:
        """Whether any payment provider answers now."""
        for provider in self.payments.clients:
            if await self.payments.payments_for_order(provider=provider, order_id=PROBE_ORDER_ID) is not None:
                return True
        return False

    async def open_channel(
        self, *, actor: str, sale_id: int, instructions: str, extend_minutes: int
    ) -> OfflineChannelOut:
        """Open the sale's channel and extend its unpaid orders; refused while a provider takes payments."""
        if await self.providers_back():
            raise errors.PaymentProvidersAvailable("A payment provider answers: buyers can pay as usual")
        now = utcnow()
        row = OfflineChannel(
            sale_id=sale_id,
            instructions=instructions,
            deadline_at=now + timedelta(minutes=extend_minutes),
            opened_at=now,
            opened_by=actor,
        )
        try:
            async with self.sessions.begin() as session:
                session.add(row)
                await session.flush()
                extended = await session.execute(EXTEND_UNPAID, {"sale_id": sale_id})
                count = int(getattr(extended, "rowcount", 0) or 0)
                after = {"channel_id": row.id, "deadline_at": row.deadline_at.isoformat(), "orders_extended": count}
                session.add(AuditEntry(actor=actor, action="offline_open", after=after, note=f"sale {sale_id}"))
        except IntegrityError:
            raise errors.OfflineChannelOpen(f"Sale {sale_id} has an open offline channel") from None
        return _channel(row, count)

    async def close_channel(self, *, actor: str, sale_id: int) -> OfflineChannelOut:
        """Close the sale's open channel (the orders it extended keep their deadline)."""
        async with self.sessions.begin() as session:
            row = await self._open_of(session, sale_id)
            if row is None:
                raise errors.NoOfflineChannel(f"Sale {sale_id} has no open offline channel")
            self._close(session, row, actor)
        return _channel(row)

    async def channel_of(self, sale_id: int) -> OfflineChannelOut:
        """The sale's open channel, else its last one."""
        async with self.sessions() as session:
            query = select(OfflineChannel).where(OfflineChannel.sale_id == sale_id).order_by(OfflineChannel.id.desc())
            row = (await session.scalars(query.limit(1))).first()
        if row is None:
            raise errors.NoOfflineChannel(f"Sale {sale_id} has no offline channel")
        return _channel(row)

    async def follow_channels(self) -> int:
        """The job: extend orders created since a channel opened; close every channel once a provider is back."""
        async with self.sessions.begin() as session:
            open_rows = (await session.scalars(select(OfflineChannel).where(OfflineChannel.closed_at.is_(None)))).all()
            if not open_rows:
                return 0
            await session.execute(EXTEND_UNPAID, {"sale_id": None})
        if not await self.providers_back():
            return 0
        async with self.sessions.begin() as session:
            rows = (
                await session.scalars(
                    select(OfflineChannel).where(OfflineChannel.closed_at.is_(None)).with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                self._close(session, row, CHANNEL_JOB)
        if rows:
            log.warning(
                "a payment provider answers again: closed the offline channel of sales %s", [r.sale_id for r in rows]
            )
        return len(rows)

    async def confirm_payment(self, *, actor: str, order_id: str, reference: str) -> OrderOut:
        """Mark an unpaid order of a sale with a channel paid offline; the same reference again is a replay."""
        async with self.sessions.begin() as session:
            order = await locked_order(session, order_id, None)
            if order.payment_provider == OFFLINE and order.state != OrderState.PENDING_PAYMENT.value:
                if order.payment_ref != reference:
                    raise errors.OfflinePaymentConflict(f"Order {order_id} was paid offline with another reference")
                return order_view(order)
            await self._check_payable(session, order)
            before = {"state": order.state, "deadline_at": order.deadline_at.isoformat()}
            order.payment_provider, order.payment_ref = OFFLINE, reference
            move(session, order, OrderState.PAID, actor=actor, reason="paid_offline", provider=OFFLINE)
            session.add(
                PaymentAttempt(
                    order_id=order.id, provider=OFFLINE, outcome=SUCCEEDED, latency_ms=0, provider_ref=reference
                )
            )
            after: dict[str, Any] = {"state": order.state, "reference": reference}
            session.add(AuditEntry(actor=actor, action="offline_paid", order_id=order.id, before=before, after=after))
        count_paid(order.sale_id, order.total, order.currency, reminded=order.reminded_at is not None)
        return order_view(order)

    async def _check_payable(self, session: AsyncSession, order: Order) -> None:
        if order.state != OrderState.PENDING_PAYMENT.value:
            raise errors.InvalidOrderState(f"The order is {order.state}", extra={"state": order.state})
        if order.payment_claimed_at is not None:
            raise errors.PaymentInProgress("A provider payment of this order is in flight; wait for its outcome")
        if order.deadline_at <= utcnow():
            raise errors.OrderExpired("The payment deadline has passed", extra={"state": order.state})
        channel = await session.scalar(
            select(OfflineChannel.id).where(OfflineChannel.sale_id == order.sale_id).limit(1)
        )
        if channel is None:
            raise errors.NoOfflineChannel(f"Sale {order.sale_id} never had an offline channel")

    async def _open_of(self, session: AsyncSession, sale_id: int) -> OfflineChannel | None:
        query = select(OfflineChannel).where(OfflineChannel.sale_id == sale_id, OfflineChannel.closed_at.is_(None))
        return (await session.scalars(query.with_for_update())).first()

    def _close(self, session: AsyncSession, row: OfflineChannel, actor: str) -> None:
        row.closed_at, row.closed_by = utcnow(), actor
        after = {"channel_id": row.id, "closed_at": row.closed_at.isoformat()}
        session.add(AuditEntry(actor=actor, action="offline_close", after=after, note=f"sale {row.sale_id}"))

"""What buyers read of their own orders: one order, the order of a reservation (long-polled while the
purchase event is on its way), and their list. Another buyer's order is not found, never shown."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from services.order import errors
from services.order.config import OrderSettings
from services.order.models import Order
from services.order.schemas import OrderOut

ORDER_OF_RESERVATION = text("SELECT id FROM orders WHERE reservation_id = :rid")


def order_view(order: Order) -> OrderOut:
    """The storefront's view of an order (its lines loaded)."""
    return OrderOut.model_validate(order)


async def load_order(session: AsyncSession, order_id: str, *, lock: bool = False) -> Order | None:
    """An order with its lines; `lock` holds its row until the session ends."""
    query = select(Order).where(Order.id == order_id).options(selectinload(Order.lines))
    if lock:
        query = query.with_for_update()
    return (await session.scalars(query)).first()


async def locked_order(session: AsyncSession, order_id: str, user_id: str | None) -> Order:
    """An order locked for a change: the buyer's own (`user_id`), or any for ops (None)."""
    order = await load_order(session, order_id, lock=True)
    if order is None or (user_id is not None and order.user_id != user_id):
        raise errors.OrderNotFound(f"No order {order_id}")
    return order


class BuyerOrders:
    """A buyer's reads of their orders."""

    def __init__(self, *, settings: OrderSettings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.sessions = sessions
        # One statement, its own transaction: a long-poll probe holds no session.
        self.engine = sessions.kw["bind"].execution_options(isolation_level="AUTOCOMMIT")

    async def get_order(self, *, order_id: str, user_id: str) -> OrderOut:
        """One of the user's orders; another user's is not found."""
        async with self.sessions() as session:
            order = await load_order(session, order_id)
        if order is None or order.user_id != user_id:
            raise errors.OrderNotFound(f"No order {order_id}")
        return order_view(order)

    async def get_by_reservation(self, *, reservation_id: str, user_id: str, wait: float) -> OrderOut:
        """The order of a reservation, waiting up to `wait` seconds for it to be created."""
        deadline = time.monotonic() + min(wait, self.settings.max_long_poll_seconds)
        delay = 0.05
        while True:
            # A flash crowd long-polls here while it pays: each miss is one autocommitted probe, no session.
            async with self.engine.connect() as conn:
                found = (await conn.execute(ORDER_OF_RESERVATION, {"rid": reservation_id})).first()
            if found is not None:
                async with self.sessions() as session:
                    order = await load_order(session, found[0])
                if order is None or order.user_id != user_id:
                    raise errors.OrderNotFound(f"No order for reservation {reservation_id}")
                return order_view(order)
            if time.monotonic() + delay > deadline:
                raise errors.OrderNotFound(
                    f"No order for reservation {reservation_id} yet", extra={"retry_after_seconds": 1}
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def list_orders(self, *, user_id: str, limit: int, offset: int) -> list[OrderOut]:
        """The user's orders, newest first."""
        async with self.sessions() as session:
            rows = await session.scalars(
                select(Order)
                .where(Order.user_id == user_id)
                .options(selectinload(Order.lines))
                .order_by(Order.created_at.desc(), Order.id)
                .limit(limit)
                .offset(offset)
            )
            return [order_view(o) for o in rows]

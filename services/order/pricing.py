"""Coupon pricing of new orders: the coupon service quotes (and locks) the coupons an order names; an
order is payable only once priced. Runs right after the orders are created and again from a background
job for any the coupon service could not answer yet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from services.common.contracts import EventType
from services.order.coupons import CouponClient
from services.order.models import Order, OrderState, OutboxEvent
from services.order.states import utcnow

log = logging.getLogger("order.pricing")


class CouponPricing:
    """Prices orders that name coupons; frees the coupons of an order that closed before it was priced."""

    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], coupons: CouponClient | None) -> None:
        self.sessions = sessions
        self.coupons = coupons

    async def price_with_coupons(self, *, order_ids: Sequence[str] | None = None, limit: int = 100) -> int:
        """Price orders that name coupons through the coupon service (which locks the coupons).

        Runs right after the orders are created and again from a background job for any the coupon
        service could not answer yet; an order is payable only once priced. An order that closed while
        unpriced gets an `order.coupons_released` event (a lock may have landed after its close event),
        and a refusal by the coupon service (4xx) prices the order without coupons. Returns orders priced.
        """
        if self.coupons is None:
            return 0
        query = (
            select(Order)
            .where(Order.pricing == "coupons_pending")
            .options(selectinload(Order.lines))
            .order_by(Order.created_at)
            .limit(limit)
        )
        if order_ids is not None:
            query = query.where(Order.id.in_(list(order_ids)))
        async with self.sessions() as session:
            found = list((await session.scalars(query)).all())
        open_orders = [o for o in found if o.state == OrderState.PENDING_PAYMENT.value]
        closed = [o for o in found if o.state != OrderState.PENDING_PAYMENT.value]
        quotes = await asyncio.gather(*(self._coupon_quote(o) for o in open_orders))
        priced = 0
        async with self.sessions.begin() as session:
            for order in closed:
                await self.release_coupons_of_closed(session, order)
            for order, quote in zip(open_orders, quotes, strict=True):
                if quote is None:
                    continue
                discount = max(0, min(int(quote["discount"]), order.subtotal))
                result = await session.execute(
                    update(Order)
                    .where(
                        Order.id == order.id,
                        Order.pricing == "coupons_pending",
                        Order.state == OrderState.PENDING_PAYMENT.value,
                    )
                    .values(
                        discount=discount,
                        total=order.subtotal - discount,
                        coupons={"discounts": quote["discounts"], "rejections": quote["rejections"]},
                        pricing="final",
                    )
                )
                if getattr(result, "rowcount", 0):
                    priced += 1
                    continue
                current = await session.get(Order, order.id)
                if current is not None and current.state != OrderState.PENDING_PAYMENT.value:
                    # Closed while the coupon service answered; priced (and maybe paid) by another replica meanwhile
                    # it is left alone.
                    await self.release_coupons_of_closed(session, current)
        return priced

    async def _coupon_quote(self, order: Order) -> dict[str, Any] | None:
        """The coupon service's price for an order; None when it could not answer (retried later)."""
        assert self.coupons is not None
        lines = [
            {"sku": li.sku, "sale_id": li.sale_id, "unit_price": li.unit_price, "quantity": li.quantity}
            for li in order.lines
        ]
        try:
            return await self.coupons.lock(
                order_id=order.id, user_id=order.user_id, member=order.member, lines=lines, coupon_ids=order.coupon_ids
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code >= 500:
                log.warning("coupon pricing of order %s deferred: %s", order.id, exc.response.status_code)
                return None
            # Refused for good (bad coupon ids...): the order is priced without coupons and says why.
            detail = exc.response.text[:300]
            return {
                "discount": 0,
                "discounts": [],
                "rejections": [
                    {"coupon_id": c, "code": "COUPON_SERVICE_REFUSED", "detail": detail} for c in order.coupon_ids
                ],
            }
        except httpx.HTTPError as exc:
            log.warning("coupon pricing of order %s deferred: %s", order.id, type(exc).__name__)
            return None

    async def release_coupons_of_closed(self, session: AsyncSession, order: Order) -> None:
        """Free the coupons of an order that closed before it was priced, once; a priced or paid order keeps them."""
        unpaid_closed = [OrderState.CANCELLED.value, OrderState.EXPIRED.value]
        result = await session.execute(
            update(Order)
            .where(Order.id == order.id, Order.pricing == "coupons_pending", Order.state.in_(unpaid_closed))
            .values(pricing="abandoned")
        )
        if not getattr(result, "rowcount", 0):
            return
        session.add(
            OutboxEvent(
                event_type=EventType.ORDER_COUPONS_RELEASED,
                payload={"order_id": order.id, "user_id": order.user_id, "at": utcnow().isoformat()},
            )
        )

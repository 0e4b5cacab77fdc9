"""The order flows wired over one engine, one Redis pool and the payment router: what main.py builds once
per process and the routes, the background jobs and the purchase-stream consumer reach through
`app.state.service`.

Each flow is its own module: creation.py (orders from purchase events), pricing.py (coupon pricing),
views.py (a buyer's reads), checkout.py (pay), cancellation.py (cancel and expiry), refunds.py,
outbox.py (order events to the stream), operations.py (ops' admin flows and figures), offline.py (the
offline payment channel).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.resources import RedisClient
from services.order.cancellation import Cancellations
from services.order.checkout import Checkout
from services.order.config import OrderSettings
from services.order.coupons import CouponClient
from services.order.creation import OrderCreation
from services.order.offline import OfflinePayments
from services.order.operations import OrderOperations
from services.order.outbox import OutboxRelay
from services.order.payments import PaymentRouter
from services.order.pricing import CouponPricing
from services.order.refunds import Refunds
from services.order.views import BuyerOrders


class OrderService:
    """One object per order flow, sharing the pools given."""

    def __init__(
        self,
        *,
        settings: OrderSettings,
        redis: RedisClient,
        sessions: async_sessionmaker[AsyncSession],
        payments: PaymentRouter,
        coupons: CouponClient | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sessions = sessions
        self.payments = payments
        self.pricing = CouponPricing(sessions=sessions, coupons=coupons)
        self.creation = OrderCreation(settings=settings, sessions=sessions, pricing=self.pricing)
        self.views = BuyerOrders(settings=settings, sessions=sessions)
        self.checkout = Checkout(engine=sessions.kw["bind"], sessions=sessions, payments=payments)
        self.cancellations = Cancellations(sessions=sessions)
        self.refunds = Refunds(settings=settings, sessions=sessions, payments=payments)
        self.outbox = OutboxRelay(settings=settings, redis=redis, sessions=sessions)
        self.operations = OrderOperations(sessions=sessions, payments=payments)
        self.offline = OfflinePayments(sessions=sessions, payments=payments)

    async def expire_due(self) -> int:
        """Expire unpaid orders past their deadline (the sweeper job)."""
        return await self.cancellations.expire_due()

    async def price_with_coupons(self) -> int:
        """Price the orders the coupon service could not answer yet (the pricing job)."""
        return await self.pricing.price_with_coupons()

    async def relay_outbox(self) -> int:
        """Publish committed outbox events to the order events stream, oldest first (the relay job)."""
        return await self.outbox.relay()

"""The flashsale flows wired over one core: what main.py builds once per process and the routes, the
background jobs and the stream consumers reach through `app.state.service`.

Each flow is its own module: purchase.py (the hot path, release and confirm), storefront.py (catalog and
live views), sales.py (ops' sales and their record), lifecycle.py (admin transitions), schedule.py
(automatic transitions), reconciliation.py; core.py is what they share.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.resources import RedisClient
from services.flashsale.config import FlashSaleSettings
from services.flashsale.core import SaleCore
from services.flashsale.purchase import Purchases
from services.flashsale.sales import Sales
from services.flashsale.schedule import AutomaticTransitions
from services.flashsale.storefront import Storefront


class FlashSaleService:
    """One core and one object per flow, over one Redis pool and one engine."""

    def __init__(
        self,
        *,
        settings: FlashSaleSettings,
        redis: RedisClient,
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        self.core = SaleCore(settings=settings, redis=redis, sessions=sessions)
        self.purchases = Purchases(self.core)
        self.storefront = Storefront(self.core)
        self.sales = Sales(self.core, self.purchases)
        self.automatic = AutomaticTransitions(self.core)
        # Bound once: the purchase routes call it with one attribute lookup and no bound-method object per call.
        self.purchase = self.purchases.purchase

    async def refresh_catalog(self) -> None:
        """Reload the sales this replica serves from PostgreSQL (the periodic job and the catalog notice)."""
        await self.storefront.refresh_catalog()

    async def run_schedule_tick(self) -> int:
        """Start and end the sales whose window opened or closed (the scheduler job)."""
        return await self.automatic.run_schedule_tick()

    async def flush_local_attempts(self) -> None:
        """Add rejections counted in this process to the sales' shared counters (the flush job)."""
        await self.purchases.flush_local_attempts()

    async def aclose(self) -> None:
        """Close the clients of other services and the purchase connection."""
        await self.core.aclose()

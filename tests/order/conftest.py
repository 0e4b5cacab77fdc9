"""The order service's own code in the test process: to create orders as purchase events would, and to read
its database, next to the real order processes a test runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis

from services.common.resources import open_engine, session_factory
from services.order.config import OrderSettings
from services.order.payments import PaymentRouter
from services.order.service import OrderService


@asynccontextmanager
async def order_service(settings: OrderSettings) -> AsyncIterator[OrderService]:
    """An OrderService on its own engine, Redis client and payment router (from `settings`), closed on exit."""
    engine = open_engine(settings)
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    payments = PaymentRouter(primary_url=settings.paysim_primary_url, backup_url=settings.paysim_backup_url)
    try:
        yield OrderService(settings=settings, redis=redis, sessions=session_factory(engine), payments=payments)
    finally:
        await payments.aclose()
        await redis.aclose()
        await engine.dispose()


@pytest.fixture(scope="module")
async def service(order_settings: OrderSettings) -> AsyncIterator[OrderService]:
    """The in-process order service of a module; the module's `order_settings` fixture says on what."""
    async with order_service(order_settings) as in_process:
        yield in_process

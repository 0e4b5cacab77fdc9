"""The order service's own code in the test process: to create orders as purchase events would, and to read
its database, next to the real order processes a test runs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from services.common.resources import open_engine, session_factory
from services.order.config import OrderSettings
from services.order.payments import PaymentRouter
from services.order.service import OrderService
from tests.conftest import TEST_REDIS_URL, PaySims, db_url_for


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


def in_process_settings(db_base: str, paysim: PaySims, *, registry: str, **overrides: Any) -> OrderSettings:
    """Settings of an in-process order service beside a module's order processes: their database (`db_base`,
    migrated once they run), the suite's Redis, the providers, a small pool; `registry` names the purchase
    stream registry it would follow (a module's own, so it takes no other test's purchases)."""
    return OrderSettings(
        env="test",
        database_url=db_url_for(db_base),
        redis_url=TEST_REDIS_URL,
        purchase_stream_registry=registry,
        paysim_primary_url=paysim.primary,
        paysim_backup_url=paysim.backup,
        db_pool_size=2,
        **overrides,
    )


@pytest.fixture(scope="module")
async def service(order_settings: OrderSettings) -> AsyncIterator[OrderService]:
    """The in-process order service of a module; the module's `order_settings` fixture says on what."""
    async with order_service(order_settings) as in_process:
        yield in_process


async def unpaid_order(
    service: OrderService, *, sale_id: int = 1, user: str | None = None, unit_price: int = 1_000
) -> tuple[str, str]:
    """A new unpaid order of one unit, created as its purchase event would create it: (order id, its buyer)."""
    tag = uuid.uuid4().hex[:10]
    user = user or f"buyer-{tag}"
    event = {"reservation_id": f"r-{tag}", "sale_id": sale_id, "user_id": user, "sku": "SKU-T", "quantity": 1}
    assert await service.creation.create_orders([{**event, "unit_price": unit_price}]) == 1
    async with service.sessions() as session:
        order_id = await session.scalar(text("SELECT id FROM orders WHERE reservation_id = :r"), {"r": f"r-{tag}"})
    assert order_id
    return str(order_id), user

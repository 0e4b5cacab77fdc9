"""The order side of a sale's numbers: orders created and paid and the GMV paid, per sale; how long a
purchase waited for its order; and the outbox backlog.

Counters are plain dict updates (services/common/metrics.py); labels are the sale id (a few per shop) and the
currency (a handful). Never an order, user or reservation id.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import Histogram
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.metrics import CounterTable, GaugeTable
from services.order.models import OutboxEvent
from services.order.states import utcnow

ORDERS_CREATED = CounterTable("order_sale_orders_created_total", "Orders created from a sale's purchases", ["sale_id"])
ORDERS_PAID = CounterTable("order_sale_orders_paid_total", "Orders of a sale paid", ["sale_id"])
GMV_PAID = CounterTable(
    "order_sale_gmv_paid_minor_total", "Order totals paid, in minor units of the currency", ["sale_id", "currency"]
)
# From the purchase event's Redis timestamp to the commit of its order: the stream, the consumer and PostgreSQL.
CREATION_LAG = Histogram(
    "order_creation_lag_seconds",
    "Seconds from a purchase accepted to its order created",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
OUTBOX_PENDING = GaugeTable("order_outbox_pending_events", "Order events committed and not yet published", [])
OUTBOX_OLDEST = GaugeTable(
    "order_outbox_oldest_pending_seconds", "Age of the oldest order event not yet published (0 when none)", []
)


@functools.cache
def _sale_label(sale_id: int) -> str:
    return str(sale_id)


def count_created(created: Iterable[tuple[int, int | None]], now_ms: int) -> None:
    """Orders just committed, as (sale id, the purchase's Redis time in epoch ms, if the event carried it)."""
    for sale_id, reserved_at_ms in created:
        ORDERS_CREATED.inc((_sale_label(sale_id),))
        if reserved_at_ms is not None:
            CREATION_LAG.observe(max(0.0, (now_ms - reserved_at_ms) / 1000))


def count_paid(sale_id: int, total: int, currency: str) -> None:
    """One order paid for `total` minor units."""
    sale = _sale_label(sale_id)
    ORDERS_PAID.inc((sale,))
    GMV_PAID.inc((sale, currency), total)


async def refresh_outbox_gauges(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Count the unpublished outbox events and the age of the oldest (one indexed query per tick)."""
    query = select(func.count(), func.min(OutboxEvent.created_at)).where(OutboxEvent.published_at.is_(None))
    async with sessions() as session:
        pending, oldest = (await session.execute(query)).one()
    OUTBOX_PENDING.replace({(): float(pending)})
    OUTBOX_OLDEST.replace({(): _age_seconds(oldest)})


def _age_seconds(at: datetime | None) -> float:
    return max(0.0, (utcnow() - at).total_seconds()) if at is not None else 0.0

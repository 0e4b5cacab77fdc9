"""The periodic briefing of every live sale: what ops read each hour (by default, counted from the sale's
start) without opening a dashboard.

Each briefing says the sale's orders, GMV and payment success (asked of the order service), its stock (the
sale's Redis hash), the units taken since the last briefing and an estimate of when it sells out at that
pace, and its anomalies with a code each (sold out within 5 minutes of the start: restock or stop?; payment
success low; nothing sold in the period; the order service not answering). It is written once per sale and
period: the row's unique (sale, period start) decides which replica's briefing counts, and only that one is
sent to the alert webhooks, signed like every alert.
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from services.common.errors import ProblemError
from services.flashsale.core import CatalogEntry, SaleCore, utcnow
from services.flashsale.events import WebhookNotifier
from services.flashsale.models import Briefing, SaleState
from services.flashsale.store import sale_key

log = logging.getLogger("flashsale.briefings")

BRIEFING = "sale.briefing"
FAST_SELL_OUT_SECONDS = 300
LOW_PAYMENT_SUCCESS = 0.9
MIN_ATTEMPTS_FOR_SUCCESS = 20
BRIEFINGS_AT_ONCE = 8  # sales briefed concurrently by one replica (each asks the order service once)


def period_start(now: datetime, starts_at: datetime, interval_seconds: float) -> datetime | None:
    """The start of the briefing period `now` falls in, counted from the sale's start: the first briefing is
    due one interval after the start (None before that)."""
    periods = math.floor((now - starts_at).total_seconds() / interval_seconds)
    if periods < 1:
        return None
    return datetime.fromtimestamp(starts_at.timestamp() + periods * interval_seconds, UTC)


def anomalies(
    stock: dict[str, int], orders: dict[str, Any] | None, taken_in_period: int | None, sellout_s: float | None
) -> list[dict[str, str]]:
    """What ops should look at, each with a stable code."""
    found: list[dict[str, str]] = []
    if sellout_s is not None and sellout_s <= FAST_SELL_OUT_SECONDS:
        minutes = max(1, round(sellout_s / 60))
        found.append({"code": "SOLD_OUT_FAST", "message": f"Sold out within {minutes} minutes: restock or stop?"})
    if orders is None:
        found.append({"code": "ORDERS_UNAVAILABLE", "message": "The order service did not answer: no order figures"})
    elif (orders.get("payment_attempts") or 0) >= MIN_ATTEMPTS_FOR_SUCCESS:
        rate = orders.get("payment_success_rate")
        if rate is not None and rate < LOW_PAYMENT_SUCCESS:
            found.append({"code": "PAYMENT_SUCCESS_LOW", "message": f"Payment success {rate:.0%}: check the providers"})
    if taken_in_period == 0 and stock["remaining"] > 0:
        found.append({"code": "NO_SALES", "message": "No unit was taken since the last briefing"})
    return found


class Briefings:
    """Writes and sends one briefing per live sale and period."""

    def __init__(self, core: SaleCore, notifier: WebhookNotifier) -> None:
        self.core = core
        self.notifier = notifier

    async def brief_live_sales(self) -> int:
        """The job: brief every live sale not yet briefed for the current period; how many this replica wrote."""
        interval = self.core.settings.briefing_interval_seconds
        now = utcnow()
        due = [
            (entry, start)
            for entry in list(self.core.catalog.values())
            if entry.state == SaleState.LIVE
            and now < entry.ends_at
            and (start := period_start(now, entry.starts_at, interval)) is not None
        ]
        gate = asyncio.Semaphore(BRIEFINGS_AT_ONCE)

        async def brief(entry: CatalogEntry, start: datetime) -> bool:
            async with gate:
                if await self._briefed(entry.id, start):
                    return False
                body = await self.briefing(entry.id, entry.data.get("title", ""), now, start)
                if not await self._record(entry.id, start, now, body):
                    return False  # another replica briefed it first
                self.notifier.send(body)
                return True

        return sum(await asyncio.gather(*(brief(entry, start) for entry, start in due)))

    async def briefing(self, sale_id: int, title: str, now: datetime, start: datetime) -> dict[str, Any]:
        """The briefing of one sale now."""
        counters: dict[str, str] = await self.core.redis.hgetall(sale_key(sale_id))  # type: ignore[assignment]
        stock = {field: int(counters.get(field) or 0) for field in ("quantity", "remaining", "reserved", "sold")}
        orders = await self._order_stats(sale_id)
        taken = stock["quantity"] - stock["remaining"]
        previous = await self._previous(sale_id, start)
        before = previous["stock"] if previous else None
        taken_in_period = taken - (before["quantity"] - before["remaining"]) if before else None
        # The sell-out estimate goes by the pace since the start: steadier than one period's.
        elapsed = max(1.0, now.timestamp() - int(counters.get("starts") or 0) / 1000)
        pace = taken / elapsed * 60  # units per minute
        first_sold_out = counters.get("first_sold_out_at")
        sellout_s = (int(first_sold_out) - int(counters.get("starts") or 0)) / 1000 if first_sold_out else None
        return {
            "type": BRIEFING,
            "sale_id": sale_id,
            "title": title,
            "at": now.isoformat(),
            "period_start": start.isoformat(),
            "currency": counters.get("currency") or "USD",
            "stock": stock,
            "orders": orders,
            "units_in_period": taken_in_period,
            "units_per_minute": round(pace, 2),
            "sell_out_in_seconds": round(stock["remaining"] / pace * 60) if pace > 0 and stock["remaining"] else None,
            "sold_out_after_seconds": sellout_s,
            "anomalies": anomalies(stock, orders, taken_in_period, sellout_s),
        }

    async def _order_stats(self, sale_id: int) -> dict[str, Any] | None:
        if self.core.orders is None:
            return None
        try:
            stats = await self.core.orders.sale_order_stats(sale_id)
        except ProblemError:
            return None
        keep = ("orders", "paid", "gmv", "payment_attempts", "payment_success_rate", "median_seconds_to_pay")
        return {key: stats.get(key) for key in keep}

    async def _briefed(self, sale_id: int, start: datetime) -> bool:
        async with self.core.sessions() as session:
            query = select(Briefing.id).where(Briefing.sale_id == sale_id, Briefing.period_start == start)
            return (await session.scalar(query)) is not None

    async def _previous(self, sale_id: int, start: datetime) -> dict[str, Any] | None:
        async with self.core.sessions() as session:
            query = select(Briefing.body).where(Briefing.sale_id == sale_id, Briefing.period_start < start)
            body: dict[str, Any] | None = await session.scalar(query.order_by(Briefing.period_start.desc()).limit(1))
            return body

    async def _record(self, sale_id: int, start: datetime, now: datetime, body: dict[str, Any]) -> bool:
        """Keep the briefing unless another replica kept one for this period first."""
        statement = (
            insert(Briefing)
            .values(sale_id=sale_id, period_start=start, at=now, body=body)
            .on_conflict_do_nothing(index_elements=["sale_id", "period_start"])
            .returning(Briefing.id)
        )
        async with self.core.sessions.begin() as session:
            return (await session.scalar(statement)) is not None

    async def recent(self, *, sale_id: int | None, limit: int) -> list[Briefing]:
        """The latest briefings, newest first (of one sale, or of all)."""
        query = select(Briefing).order_by(Briefing.at.desc(), Briefing.id.desc()).limit(limit)
        if sale_id is not None:
            query = query.where(Briefing.sale_id == sale_id)
        async with self.core.sessions() as session:
            return list(await session.scalars(query))

"""What ops watch during a sale, per sale: views, purchase attempts by outcome, units accepted, and the live
stock gauges.

The counters are plain dict updates on the purchase path (services/common/metrics.py says why); the stock
gauges are read from Redis by a periodic job, one pipelined read of the warm sales' hashes per tick, never
per purchase. Label values are sale ids of this replica's catalog (a few per shop) and a closed set of
outcomes; a request for a sale id the catalog does not hold counts under `sale_id="unknown"`, so random ids
cannot grow the series.
"""

from __future__ import annotations

import functools
from typing import Any

from services.common.contracts import sale_alert_stream
from services.common.metrics import CounterTable, GaugeTable
from services.flashsale.core import WARM_STATES, SaleCore
from services.flashsale.models import SaleState
from services.flashsale.store import sale_key

UNKNOWN_SALE = "unknown"

SALE_VIEWS = CounterTable("flashsale_sale_views_total", "Storefront detail views of a sale", ["sale_id"])
PURCHASES = CounterTable(
    "flashsale_sale_purchases_total",
    "Purchase attempts of a sale by outcome (accepted or the refusal)",
    ["sale_id", "outcome"],
)
UNITS_ACCEPTED = CounterTable(
    "flashsale_sale_units_accepted_total", "Units reserved by accepted purchases (replays not counted)", ["sale_id"]
)
STOCK = {
    field: GaugeTable(f"flashsale_sale_{field}_units", text, ["sale_id"])
    for field, text in (
        ("quantity", "Units a live sale offers in all"),
        ("remaining", "Units of a live sale still buyable"),
        ("reserved", "Units of a live sale reserved and not yet paid or released"),
        ("sold", "Units of a live sale paid for"),
        ("low_stock_threshold", "Remaining units at or below which a live sale is low on stock"),
    )
}
SALE_LIVE = GaugeTable("flashsale_sale_live", "1 while a warm sale is live (0 scheduled or paused)", ["sale_id"])
SELLOUT_SECONDS = GaugeTable(
    "flashsale_sale_sellout_seconds", "Seconds from a sale's start to its first sell-out", ["sale_id"]
)

# The purchase script's answers (and the guards' own refusals) as outcome labels; docs/observability.md maps
# each to the problem `code` the buyer sees.
OUTCOMES = {
    "OK": "accepted",
    "REPLAY": "replay",
    "SOLD_OUT": "sold_out",
    "LIMIT": "limit_exceeded",
    "INSUFFICIENT": "insufficient_stock",
    "KEY_REUSED": "key_reused",
    "NOT_LIVE": "not_live",
    "NOT_FOUND": "not_found",
    "rate_limited": "rate_limited",
    "unavailable": "stock_unavailable",
}


@functools.cache
def _sale_label(sale_id: int) -> str:
    return str(sale_id)


def count_view(core: SaleCore, sale_id: int) -> None:
    """One storefront detail view of a sale in the catalog."""
    SALE_VIEWS.inc((_sale_label(sale_id) if sale_id in core.catalog else UNKNOWN_SALE,))


def count_purchase(core: SaleCore, sale_id: int, kind: str, quantity: int = 0) -> None:
    """One purchase attempt's outcome; an accepted one adds its units."""
    sale = _sale_label(sale_id) if sale_id in core.catalog else UNKNOWN_SALE
    PURCHASES.inc((sale, OUTCOMES.get(kind, kind)))
    if kind == "OK":
        UNITS_ACCEPTED.inc((sale,), quantity)


async def refresh_stock_gauges(core: SaleCore) -> None:
    """Read the warm sales' stock counters (one pipelined round trip) into the gauges."""
    entries = [e for e in list(core.catalog.values()) if e.state in WARM_STATES]
    hashes: list[Any] = []
    if entries:
        async with core.redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.hgetall(sale_key(entry.id))
            hashes = await pipe.execute()
    stock: dict[str, dict[tuple[str, ...], float]] = {field: {} for field in STOCK}
    live: dict[tuple[str, ...], float] = {}
    sellout: dict[tuple[str, ...], float] = {}
    for entry, counters in zip(entries, hashes, strict=True):
        if not counters:
            continue  # not warmed yet, or Redis lost it: reconciliation tells
        labels = (_sale_label(entry.id),)
        for field in STOCK:
            source = "threshold" if field == "low_stock_threshold" else field
            stock[field][labels] = float(counters.get(source) or 0)
        live[labels] = 1.0 if counters.get("state", entry.state.value) == SaleState.LIVE.value else 0.0
        first = counters.get("first_sold_out_at")
        if first:
            starts = int(counters.get("starts") or entry.starts_at.timestamp() * 1000)
            sellout[labels] = max(0.0, (int(first) - starts) / 1000)
    for field, gauge in STOCK.items():
        gauge.replace(stock[field])
    SALE_LIVE.replace(live)
    SELLOUT_SECONDS.replace(sellout)


async def alert_streams(core: SaleCore) -> list[str]:
    """The alert streams of the warm sales, whose backlog the alert relay's group reads."""
    return [sale_alert_stream(e.id) for e in list(core.catalog.values()) if e.state in WARM_STATES]

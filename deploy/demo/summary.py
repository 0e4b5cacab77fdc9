"""The demo's summary: the burst, the orders, the warehouse, the sale's balance; each part with its problems."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from deploy.demo.crowd import BurstResult, OrdersResult
from deploy.demo.settle import Settled
from loadtest import checker, seed

DEMO_STOCK = 1000  # units the demo's SKU starts with in the warehouse
DEMO_LOW_STOCK = 100  # its low-stock threshold, units


@dataclass(frozen=True, slots=True)
class DemoStock:
    """The demo sale's SKU in inventory and the units allocated to the sale."""

    sku: str
    sale_id: int
    allocated: int


@dataclass(frozen=True, slots=True)
class StreamCount:
    """The sale's purchase stream right after the burst: entries ever added, and reservations recorded."""

    events: int
    reservations: int


def burst_lines(
    sale_id: int, quantity: int, burst: BurstResult, stats: dict[str, Any], stream: StreamCount
) -> list[str]:
    """What the shoppers' purchases were answered, beside what flashsale recorded right after the crowd."""
    recorded = int(stats["reserved"]) + int(stats["sold"]) + int(stats["released"])
    oversold = burst.units - quantity
    rps = burst.requests / burst.elapsed if burst.elapsed else 0.0
    rejected = ", ".join(f"{code} {n:,}" for code, n in burst.rejections.most_common()) or "none"
    lines = [
        f"  requests          {burst.requests:,} in {burst.elapsed:.2f}s = {rps:,.0f} requests/s",
        f"  units sold        {burst.units:,} of {quantity:,} (202 answers: {burst.accepted:,} reservations)",
        f"  admin stats       reserved {stats['reserved']} + sold {stats['sold']} + released {stats['released']} "
        f"= {recorded}, remaining {stats['remaining']}",
        f"  rejections        {rejected}",
    ]
    if burst.transport_errors:
        lines.append(
            f"  transport errors  {burst.transport_errors:,} (no definite answer after the retries; "
            "the outcome of those is unknown)"
        )
    lines.append(
        f"  events stream     {{fs:{sale_id}}}:events got {stream.events:,} purchase events; "
        f"reservations: {stream.reservations:,}"
    )
    lines.append(f"  oversold = {max(oversold, 0)}  (units accepted - quantity = {oversold}, must be <= 0)")
    return lines


def burst_problems(burst: BurstResult, stats: dict[str, Any], stream: StreamCount) -> list[str]:
    """Answers and records that disagree (overselling itself is the checker's to judge).

    Every accepted reservation is reserved, sold (paid) or released (its order expired or was cancelled)."""
    recorded = int(stats["reserved"]) + int(stats["sold"]) + int(stats["released"])
    problems = []
    if stream.events != stream.reservations:
        problems.append(f"the events stream ({stream.events}) and the reservations ({stream.reservations}) disagree")
    if len(burst.reservations) != burst.accepted:
        problems.append(f"{burst.accepted} accepted answers carry {len(burst.reservations)} reservation ids")
    if not burst.transport_errors and (recorded != burst.units or stream.reservations != burst.accepted):
        problems.append(f"answers ({burst.units} units) and records ({recorded} units) disagree")
    return problems


def orders_lines(burst: BurstResult, orders: OrdersResult, settled: Settled, fail_primary: bool) -> list[str]:
    """The order half of the summary: created, paid, expired, and flashsale's stock afterwards."""
    stats, sale = settled.order_stats, settled.sale_stats
    providers = Counter(orders.paid.values())
    by_provider = ", ".join(f"{name} {n:,}" for name, n in sorted(providers.items())) or "none"
    refused = ", ".join(f"{code} {n:,}" for code, n in orders.pay_failures.most_common())
    missing = ", ".join(f"{code} {n:,}" for code, n in orders.missing.most_common())
    rate = stats.get("payment_success_rate")
    expired, cancelled = settled.closed.get("expired", 0), settled.closed.get("cancelled", 0)
    return [
        f"  orders            {len(orders.orders):,} created for {burst.accepted:,} accepted reservations "
        f"(fetched through the gateway in {orders.fetch_elapsed:.2f}s)"
        + (f"; not found: {missing}" if missing else ""),
        f"  paid              {len(orders.paid):,} (by provider: {by_provider}) in {orders.pay_elapsed:.2f}s; "
        f"left unpaid {len(orders.unpaid):,}"
        + (f"; payments refused: {refused}" if refused else "")
        + (f"; {orders.pricing_waits:,} payments retried while coupons applied" if orders.pricing_waits else ""),
        f"  expired           {expired:,} orders after {settled.deadline_seconds:.0f}s unpaid"
        + (f", cancelled {cancelled:,}" if cancelled else "")
        + f" = {settled.closed_units:,} units; flashsale released {sale['released']} back in stock "
        f"(remaining {sale['remaining']}, waited {settled.waited:.1f}s)",
        f"  flashsale stock   sold {sale['sold']} (paid units {settled.paid_units:,}), "
        f"reserved {sale['reserved']}, released {sale['released']}, remaining {sale['remaining']}",
        f"  order stats       {', '.join(f'{k} {v}' for k, v in sorted(stats['by_state'].items())) or 'none'}",
        f"  GMV               {seed.money(int(stats['gmv']))} from {stats['paid']} paid orders",
        "  payment success   "
        + (f"{rate:.1%} of {stats['payment_attempts']} provider calls" if rate is not None else "no payments")
        + (" (primary down: its failed calls count)" if fail_primary else ""),
    ]


def orders_problems(quantity: int, burst: BurstResult, orders: OrdersResult, settled: Settled) -> list[str]:
    """An order per accepted reservation, and flashsale's sold / released units equal to the orders'."""
    stats, sale = settled.order_stats, settled.sale_stats
    problems = []
    if len(orders.orders) != burst.accepted or int(stats["orders"]) != burst.accepted:
        problems.append(
            f"{burst.accepted} accepted reservations but {len(orders.orders)} orders fetched "
            f"({stats['orders']} in the order service)"
        )
    if int(sale["released"]) != settled.closed_units:
        problems.append(
            f"flashsale released {sale['released']} units; expired/cancelled orders hold {settled.closed_units}"
        )
    if int(sale["sold"]) != settled.paid_units:
        problems.append(f"flashsale sold {sale['sold']} units; paid orders hold {settled.paid_units}")
    if int(sale["sold"]) + int(sale["reserved"]) > quantity:
        problems.append(f"OVERSOLD after payments: sold {sale['sold']} + reserved {sale['reserved']} > {quantity}")
    if settled.timed_out:
        problems.append("the orders did not settle in time (still awaiting payment, or flashsale behind)")
    return problems


def inventory_summary(admin: checker.Admin, *, stock: DemoStock, sold: int) -> tuple[list[str], list[str]]:
    """After flashsale settled the ended sale: its sold units left the allocation as sold, the rest went back
    to available. Returns summary lines (the allocation, the SKU's counters, the reconciliation) and problems."""
    sold = max(0, min(sold, stock.allocated))
    returned = stock.allocated - sold
    allocation = admin.get("inventory", f"/admin/allocations/{stock.sale_id}/{stock.sku}")
    sku = admin.get("inventory", f"/admin/skus/{stock.sku}")
    recon = admin.get("inventory", "/admin/reconciliation")
    lines = [
        f"  inventory         {stock.sku}: allocated {stock.allocated:,} to the sale -> sold {sold:,}, "
        f"returned {returned:,} (outstanding {allocation.get('outstanding', 0)})",
        f"  inventory stock   on_hand {sku['on_hand']}, available {sku['available']}, allocated {sku['allocated']}, "
        f"held {sku['held']}, sold {sku['sold']}",
        f"  reconciliation    {'ok' if recon['ok'] else 'NOT ok'} over {len(recon['skus']):,} SKUs"
        + (f"; drift: {'; '.join(recon['drift'][:5])}" if recon["drift"] else ""),
    ]
    problems = []
    settled = (int(allocation["sold"]), int(allocation["returned"]), int(allocation["outstanding"]))
    if settled != (sold, returned, 0):
        problems.append(
            f"the warehouse allocation settled as (sold, returned, outstanding) {settled}, "
            f"expected {(sold, returned, 0)}"
        )
    if not recon["ok"]:
        problems.append(f"inventory reconciliation is not ok: {recon['drift'][:5]}")
    if not any(r["sku"] == stock.sku for r in recon["skus"]):
        problems.append(f"the reconciliation does not cover {stock.sku}")
    expected = {"on_hand": DEMO_STOCK, "available": DEMO_STOCK - sold, "allocated": 0, "held": 0, "sold": sold}
    got = {name: int(sku[name]) for name in expected}
    if got != expected:
        problems.append(f"inventory counters of {stock.sku} are {got}, expected {expected}")
    return lines, problems


def balance_line(recon: dict[str, Any]) -> str:
    """flashsale's reconciliation of the sale as one line."""
    return (
        f"  sale reconciled   quantity {recon['quantity']} = remaining {recon['remaining']} + unpaid "
        f"{recon['reserved_unpaid']} + paid {recon['paid']} + returned {recon['returned']}: "
        + ("balanced" if recon["balanced"] else f"drift {recon['drift']:+d}")
    )

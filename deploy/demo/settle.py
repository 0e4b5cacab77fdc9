"""After the crowd: wait until the demo's orders settle, end the sale, and read where every order ended up."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from deploy.demo.crowd import OrdersResult
from deploy.state import say
from loadtest import checker

CLOSED_STATES = ("expired", "cancelled")  # an unpaid order's end: flashsale releases its units
SETTLE_GRACE = 20.0  # seconds past the last payment deadline: the sweeper runs every second, the relay every 50 ms


@dataclass(slots=True)
class Settled:
    """Where the orders of the demo sale ended up, and flashsale's stock afterwards."""

    order_stats: dict[str, Any]
    sale_stats: dict[str, Any]
    paid_units: int
    closed: dict[str, int]  # expired / cancelled -> orders
    closed_units: int
    deadline_seconds: float
    waited: float
    timed_out: bool
    orders: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # paid / expired / cancelled -> orders


@dataclass(frozen=True, slots=True)
class Wait:
    """How long the orders had to pay, how long the demo waited for them, whether it gave up, and flashsale's
    stock then (before the sale ends and returns its unsold units to the warehouse)."""

    deadline_seconds: float
    waited: float
    timed_out: bool
    sale_stats: dict[str, Any]


def units(order: dict[str, Any]) -> int:
    """The units of one order."""
    return sum(int(line["quantity"]) for line in order["lines"])


def _time_to_pay(orders: OrdersResult) -> tuple[float, float]:
    """(seconds an order has to pay, seconds until the last unpaid one expires)."""
    known = [j for j in orders.orders.values() if j.order_created_at and j.order_deadline_at]
    if not known:
        return 0.0, 0.0
    created, due = (datetime.fromisoformat(str(t)) for t in (known[0].order_created_at, known[0].order_deadline_at))
    latest = max(datetime.fromisoformat(str(j.order_deadline_at)) for j in known)
    return (due - created).total_seconds(), max(0.0, (latest - datetime.now(UTC)).total_seconds())


def wait_for_orders(admin: checker.Admin, sale_id: int, orders: OrdersResult) -> Wait:
    """Wait until no order of the sale awaits payment and flashsale holds no unpaid unit ({orders}:events stream)."""
    start = time.monotonic()
    deadline_seconds, wait_for = _time_to_pay(orders)
    if not orders.cancelled and (orders.unpaid or orders.pay_failures):
        say(f"waiting up to {wait_for:.0f}s for the unpaid orders to expire ({deadline_seconds:.0f}s to pay)")
    give_up = time.monotonic() + wait_for + SETTLE_GRACE
    while True:
        order_stats = admin.get("order", "/admin/orders/stats", {"sale_id": sale_id})
        sale_stats = admin.get("flashsale", f"/admin/sales/{sale_id}/stats")
        done = not order_stats["by_state"].get("pending_payment") and int(sale_stats["reserved"]) == 0
        if done or time.monotonic() > give_up:
            return Wait(deadline_seconds, time.monotonic() - start, not done, sale_stats)
        time.sleep(0.5)


def wait_settled_with_the_warehouse(admin: checker.Admin, sale_id: int, timeout: float = 30.0) -> dict[str, Any]:
    """The ended sale once flashsale reported its sold and returned units to inventory (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        sale: dict[str, Any] = admin.get("flashsale", f"/admin/sales/{sale_id}")
        if sale.get("settled_at") or time.monotonic() > deadline:
            return sale
        time.sleep(0.2)


def settled_from(facts: checker.SaleFacts, order_stats: dict[str, Any], wait: Wait) -> Settled:
    """Where the orders ended up (from what the checker read) and whether flashsale's stock agreed."""
    by_state: dict[str, list[dict[str, Any]]] = {state: [] for state in ("paid", *CLOSED_STATES)}
    for order in facts.orders:
        by_state.setdefault(str(order["state"]), []).append(order)
    paid_units = sum(units(o) for o in by_state["paid"])
    closed_units = sum(units(o) for state in CLOSED_STATES for o in by_state[state])
    sale_stats = wait.sale_stats
    agrees = int(sale_stats["sold"]) == paid_units and int(sale_stats["released"]) == closed_units
    return Settled(
        order_stats=order_stats,
        sale_stats=sale_stats,
        paid_units=paid_units,
        closed={state: len(by_state[state]) for state in CLOSED_STATES},
        closed_units=closed_units,
        deadline_seconds=wait.deadline_seconds,
        waited=wait.waited,
        timed_out=wait.timed_out or not agrees or bool(order_stats["by_state"].get("pending_payment")),
        orders={state: by_state[state] for state in ("paid", *CLOSED_STATES)},
    )

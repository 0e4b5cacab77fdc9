"""The demo's crowd is the load test's: loadtest/locustfile.py's Shoppers, set on the sale by loadtest/crowd.py the
way every drill sets its crowd, in the `journeys` shape. Each shopper walks the chain once through the gateway:
the sale's countdown, a coupon claim for some, the purchase (naming the coupon), the order (long poll), the price
with the coupon, the payment for most; the run ends as soon as all of them have walked it.

What they saw is read back from the run directory (loadtest/outcomes.py): the 202s the checker holds the system
to (accepted.jsonl), every answer's code (outcomes.json) and each shopper's journey (journeys.jsonl).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.errors import StackError
from loadtest import checker
from loadtest.crowd import locust_log_tail, start_crowd, wait_for_crowd
from loadtest.outcomes import PURCHASE, RETRY_SAME_KEY, Journey, read_codes, read_journeys
from loadtest.report import read_stats
from loadtest.targets import Targets

LOCUST_GRACE = 60.0  # seconds Locust may take beyond the shape's bound (start-up, reports) before it is stopped


@dataclass(frozen=True, slots=True)
class CrowdPlan:
    """How many shoppers come, how fast, what share claims a coupon and pays, and the most the crowd may take."""

    users: int
    spawn_rate: float
    coupon_share: float
    pay_share: float
    seconds: float

    def shape(self) -> dict[str, str]:
        """The locustfile's settings of this crowd (its environment)."""
        return {
            "LOADTEST_SHAPE": "journeys",
            "LOADTEST_USERS": str(self.users),
            "LOADTEST_SPAWN_RATE": str(self.spawn_rate),
            "LOADTEST_HOLD": str(self.seconds),
            "LOADTEST_COUPON_SHARE": str(self.coupon_share),
            "LOADTEST_PAY_SHARE": str(self.pay_share),
        }


@dataclass(slots=True)
class BurstResult:
    """What the shoppers' purchases were answered."""

    requests: int = 0
    accepted: int = 0  # 202 answers
    units: int = 0  # sum of quantities in 202 answers
    rejections: Counter[str] = field(default_factory=Counter)
    transport_errors: int = 0  # purchases left with no definite answer after the retries: outcome unknown
    elapsed: float = 0.0
    reservations: dict[str, tuple[str, int]] = field(default_factory=dict)  # reservation id -> (user id, units)
    coupon_of: dict[str, str] = field(default_factory=dict)  # reservation id -> the coupon its purchase named


@dataclass(slots=True)
class OrdersResult:
    """What the shoppers saw of their orders."""

    orders: dict[str, Journey] = field(default_factory=dict)  # reservation id -> the journey that got its order
    missing: Counter[str] = field(default_factory=Counter)  # reservations without an order, by last answer
    paid: dict[str, str] = field(default_factory=dict)  # order id -> the provider that charged it
    unpaid: list[Journey] = field(default_factory=list)  # journeys that left their order unpaid on purpose
    pay_failures: Counter[str] = field(default_factory=Counter)  # refused payments, by code
    cancelled: int = 0  # unpaid orders cancelled (too long to wait for their deadline)
    pricing_waits: int = 0  # payments answered ORDER_PRICING_PENDING (coupons not applied yet) and retried
    fetch_elapsed: float = 0.0
    pay_elapsed: float = 0.0


@dataclass(slots=True)
class Claims:
    """The demo's coupon template and what its claimers got."""

    template: dict[str, Any]
    claimers: int = 0
    coupons: dict[str, str] = field(default_factory=dict)  # user id -> the coupon claimed
    keys: dict[str, str] = field(default_factory=dict)  # user id -> the Idempotency-Key of that claim
    refused: Counter[str] = field(default_factory=Counter)  # claims refused, by code
    replayed_same: int = 0  # a claim repeated with the same Idempotency-Key answered with the same coupon
    replayed_other: Counter[str] = field(default_factory=Counter)  # ... answered otherwise, by answer
    second: Counter[str] = field(default_factory=Counter)  # a second claim (new key) by a holder, by answer
    elapsed: float = 0.0
    quotes: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (units, a holder's best quote)


@dataclass(slots=True)
class CrowdRun:
    """The crowd's run: the journeys, what they add up to, and Locust's own account of it."""

    journeys: list[Journey]
    burst: BurstResult
    orders: OrdersResult
    claims: Claims | None
    locust_exit: int
    locust_stats: dict[str, str]  # Locust's aggregated row (locust_stats.csv); empty when it wrote none


def span(starts: Iterable[float | None], ends: Iterable[float | None]) -> float:
    """Seconds from the earliest start to the latest end (0 when either is unknown)."""
    first = [t for t in starts if t is not None]
    last = [t for t in ends if t is not None]
    return max(0.0, max(last) - min(first)) if first and last else 0.0


def burst_of(journeys: list[Journey], accepted: dict[str, tuple[str, int]], codes: Counter[str]) -> BurstResult:
    """The purchases: every answer's code, the logged 202s, and which purchase named which coupon."""
    buying = [j for j in journeys if j.purchase_at is not None]
    return BurstResult(
        requests=sum(codes.values()),
        accepted=len(accepted),
        units=sum(units for _user, units in accepted.values()),
        rejections=Counter({code: n for code, n in codes.items() if code not in ("202", "TRANSPORT")}),
        transport_errors=sum(j.purchase_code in RETRY_SAME_KEY for j in buying),
        elapsed=span((j.purchase_at for j in buying), (j.answered_at for j in buying)),
        reservations=dict(accepted),
        coupon_of={j.reservation_id: j.coupon_id for j in journeys if j.reservation_id and j.coupon_id},
    )


def orders_of(journeys: list[Journey]) -> OrdersResult:
    """The orders the shoppers got, paid and left unpaid."""
    ordered = [j for j in journeys if j.order_id]
    payers = [j for j in ordered if j.pays]
    return OrdersResult(
        orders={str(j.reservation_id): j for j in ordered},
        missing=Counter(str(j.order_code) for j in journeys if j.reservation_id and not j.order_id),
        paid={str(j.order_id): str(j.payment_provider) for j in payers if j.pay_code == "200"},
        unpaid=[j for j in ordered if not j.pays],
        pay_failures=Counter(str(j.pay_code) for j in payers if j.pay_code != "200"),
        pricing_waits=sum(j.pricing_waits for j in payers),
        fetch_elapsed=span((j.answered_at for j in ordered), (j.ordered_at for j in ordered)),
        pay_elapsed=span((j.ordered_at for j in payers), (j.paid_at for j in payers)),
    )


def claims_of(journeys: list[Journey], template: dict[str, Any] | None) -> Claims | None:
    """The coupon claims the shoppers made (None when the sale has no coupon template)."""
    if not template:
        return None
    claimers = [j for j in journeys if j.claim_key]
    return Claims(
        template=template,
        claimers=len(claimers),
        coupons={j.user_id: j.coupon_id for j in claimers if j.coupon_id},
        keys={j.user_id: str(j.claim_key) for j in claimers if j.coupon_id},
        refused=Counter(str(j.claim_code) for j in claimers if not j.coupon_id),
        elapsed=span((j.started_at for j in claimers), (j.claimed_at for j in claimers)),
    )


def read_crowd(run_dir: Path, sale_id: int, template: dict[str, Any] | None, locust_exit: int) -> CrowdRun:
    """What the crowd left in the run directory, as the demo's summary reads it."""
    journeys = read_journeys(run_dir)
    accepted = checker.read_acknowledged(run_dir / "accepted.jsonl", {sale_id}).get(sale_id, {})
    burst = burst_of(journeys, accepted, read_codes(run_dir, PURCHASE))
    stats = next((row for row in read_stats(run_dir) if row.get("Name") == "Aggregated"), {})
    return CrowdRun(journeys, burst, orders_of(journeys), claims_of(journeys, template), locust_exit, stats)


def run_crowd(run_dir: Path, targets: Targets, plan: CrowdPlan, run: dict[str, Any]) -> CrowdRun:
    """Set the crowd on the seeded sale (run.json in `run_dir`) and read what it saw once every shopper walked."""
    locust = start_crowd(run_dir, targets, plan.shape())
    code = wait_for_crowd(locust, plan.seconds + LOCUST_GRACE)
    crowd = read_crowd(run_dir, int(run["sale_id"]), run.get("coupon_template"), code)
    if not crowd.journeys:
        raise StackError(f"the crowd walked no journey (Locust exit {code}); locust.log:\n{locust_log_tail(run_dir)}")
    return crowd

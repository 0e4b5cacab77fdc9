"""What a coupon is to the pricing engine: order lines, tiers, a coupon's rule, the customer, and whether a
template is valid (`validate_rule`, also what template creation checks).

Frozen dataclasses and pure functions, no I/O. Money is an integer in minor units; percentages are basis
points (500 = 5%). Amounts in texts are shown with two decimals (display only).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

Kind = Literal["fixed_off", "percent_off", "tiered", "no_threshold", "member_only", "new_user", "compensation"]
Scope = Literal["all", "skus", "sales"]
CouponState = Literal["available", "locked", "used", "expired"]

BP_WHOLE = 10_000  # 100% in basis points
KINDS: frozenset[str] = frozenset(get_args(Kind))
SCOPES: frozenset[str] = frozenset(get_args(Scope))
STATES: frozenset[str] = frozenset(get_args(CouponState))
# Kinds whose discount is a fixed amount / a percentage; member_only and new_user may be either (exactly one).
AMOUNT_KINDS = frozenset({"fixed_off", "no_threshold", "compensation"})
PERCENT_KINDS = frozenset({"percent_off"})
EITHER_KINDS = frozenset({"member_only", "new_user"})


@dataclass(frozen=True, slots=True)
class Line:
    """One order line: a SKU bought at a unit price (from a sale, or not)."""

    sku: str
    sale_id: int | None
    unit_price: int
    quantity: int

    def __post_init__(self) -> None:
        if self.unit_price < 0:
            raise ValueError(f"line {self.sku}: unit_price must be >= 0, got {self.unit_price}")
        if self.quantity < 1:
            raise ValueError(f"line {self.sku}: quantity must be >= 1, got {self.quantity}")

    @property
    def amount(self) -> int:
        """unit_price x quantity, in minor units."""
        return self.unit_price * self.quantity


@dataclass(frozen=True, slots=True)
class Tier:
    """Spend at least `spend` (inclusive) in scope, save `off`."""

    spend: int
    off: int


@dataclass(frozen=True, slots=True)
class CouponRule:
    """One coupon a user holds, with what its template says."""

    coupon_id: str
    template_id: int
    kind: Kind
    amount_off: int = 0
    percent_bp: int = 0
    cap: int | None = None
    min_spend: int = 0
    tiers: tuple[Tier, ...] = ()
    scope: Scope = "all"
    scope_skus: frozenset[str] = frozenset()
    scope_sales: frozenset[int] = frozenset()
    stacking_group: str | None = None
    exclusive: bool = False
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    state: CouponState = "available"
    locked_by: str | None = None


@dataclass(frozen=True, slots=True)
class Customer:
    """Who is buying, as far as coupon eligibility cares."""

    user_id: str
    is_member: bool = False
    paid_orders: int = 0


def money(minor: int) -> str:
    """Minor units as a two-decimal display string: 50000 -> "500.00"."""
    sign = "-" if minor < 0 else ""
    whole, cents = divmod(abs(minor), 100)
    return f"{sign}{whole}.{cents:02d}"


def percent(bp: int) -> str:
    """Basis points as a percentage: 500 -> "5%", 1250 -> "12.5%"."""
    whole, frac = divmod(bp, 100)
    return f"{whole}.{frac:02d}".rstrip("0").rstrip(".") + "%"


def validate_rule(rule: CouponRule) -> list[str]:
    """Problems with a coupon's template, in words an ops person can fix; an empty list means it is fine."""
    problems: list[str] = []
    kind = rule.kind
    if kind not in KINDS:
        return [f"unknown kind {kind!r}"]
    for name in ("amount_off", "percent_bp", "min_spend"):
        if getattr(rule, name) < 0:
            problems.append(f"{name} must be >= 0, got {getattr(rule, name)}")
    if rule.cap is not None and rule.cap < 0:
        problems.append(f"cap must be >= 0, got {rule.cap}")
    if rule.percent_bp > BP_WHOLE:
        problems.append(f"percent_bp must be at most {BP_WHOLE} (100%), got {rule.percent_bp}")

    has_amount, has_percent = rule.amount_off > 0, rule.percent_bp > 0
    if kind in AMOUNT_KINDS:
        if not has_amount:
            problems.append(f"{kind} needs amount_off > 0")
        if rule.percent_bp:
            problems.append(f"{kind} takes amount_off, not percent_bp")
    elif kind in PERCENT_KINDS:
        if not has_percent:
            problems.append(f"{kind} needs percent_bp in 1..{BP_WHOLE}")
        if rule.amount_off:
            problems.append(f"{kind} takes percent_bp, not amount_off")
    elif kind in EITHER_KINDS:
        if has_amount == has_percent:
            problems.append(f"{kind} needs exactly one of amount_off > 0 or percent_bp in 1..{BP_WHOLE}")
    elif kind == "tiered":
        problems.extend(_tier_problems(rule))
    if kind != "tiered" and rule.tiers:
        problems.append(f"tiers are only for tiered coupons, not {kind}")
    if kind == "no_threshold" and rule.min_spend:
        problems.append("no_threshold must have min_spend 0")
    if rule.cap is not None and not has_percent:
        problems.append("cap only limits a percentage discount")

    problems.extend(_scope_problems(rule))
    for name in ("valid_from", "valid_until"):
        moment = getattr(rule, name)
        if moment is not None and moment.utcoffset() is None:
            problems.append(f"{name} must be timezone-aware (UTC)")
    if (
        rule.valid_from is not None
        and rule.valid_until is not None
        and rule.valid_from.utcoffset() is not None
        and rule.valid_until.utcoffset() is not None
        and rule.valid_from >= rule.valid_until
    ):
        problems.append("valid_from must be before valid_until")
    if rule.state not in STATES:
        problems.append(f"unknown state {rule.state!r}")
    return problems


def _tier_problems(rule: CouponRule) -> list[str]:
    """What is wrong with a tiered coupon's tiers and fields."""
    problems: list[str] = []
    if not rule.tiers:
        problems.append("tiered needs at least one tier")
    if rule.amount_off or rule.percent_bp:
        problems.append("tiered takes its discounts from tiers, not amount_off/percent_bp")
    if rule.min_spend:
        problems.append("tiered takes its thresholds from tiers; min_spend must be 0")
    for i, tier in enumerate(rule.tiers):
        if tier.spend <= 0 or tier.off <= 0:
            problems.append(f"tier {i + 1}: spend and off must be > 0, got spend {tier.spend} off {tier.off}")
        elif tier.off > tier.spend:
            problems.append(f"tier {i + 1}: off {tier.off} is more than its spend {tier.spend}")
    for i, (lower, upper) in enumerate(zip(rule.tiers, rule.tiers[1:], strict=False)):
        if upper.spend <= lower.spend or upper.off <= lower.off:
            problems.append(
                f"tiers out of order: tier {i + 2} (spend {upper.spend} off {upper.off}) must have a larger "
                f"spend and a larger off than tier {i + 1} (spend {lower.spend} off {lower.off})"
            )
    return problems


def _scope_problems(rule: CouponRule) -> list[str]:
    """What is wrong with a coupon's scope fields."""
    if rule.scope not in SCOPES:
        return [f"unknown scope {rule.scope!r}"]
    problems: list[str] = []
    if rule.scope == "skus" and not rule.scope_skus:
        problems.append("scope 'skus' needs at least one sku in scope_skus")
    if rule.scope == "sales" and not rule.scope_sales:
        problems.append("scope 'sales' needs at least one sale in scope_sales")
    if rule.scope != "skus" and rule.scope_skus:
        problems.append(f"scope_skus is set but scope is {rule.scope!r}")
    if rule.scope != "sales" and rule.scope_sales:
        problems.append(f"scope_sales is set but scope is {rule.scope!r}")
    return problems

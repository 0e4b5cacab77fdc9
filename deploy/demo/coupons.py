"""What became of the demo's coupons: claims within the limits, used by paid orders, freed by unpaid ones."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deploy.demo.crowd import BurstResult, Claims
from deploy.demo.settle import CLOSED_STATES, Settled
from loadtest import checker, seed

DEMO_PRICE = seed.PRICE  # the demo sale's unit price, minor units ($19.99)
# The demo's coupon, for the demo sale only: buy one unit ($19.99) save $3.00, two units ($39.98) save $8.00.
DEMO_COUPON_TIERS = ((DEMO_PRICE, 300), (2 * DEMO_PRICE, 800))
COUPON_SETTLE_SECONDS = 15.0  # how long the coupon service may take to use / free the coupons of settled orders


def tier_discount(amount: int) -> int:
    """What the demo coupon takes off an in-scope amount."""
    return max((off for spend, off in DEMO_COUPON_TIERS if spend <= amount), default=0)


def discounts(order: dict[str, Any]) -> list[dict[str, Any]]:
    """The coupon discounts an order was priced with."""
    found: list[dict[str, Any]] = (order.get("coupons") or {}).get("discounts", [])
    return found


def claims_problems(claims: Claims, stats: dict[str, Any]) -> list[str]:
    """What is wrong with the claims: more coupons than the template has, lost claims, broken limits."""
    total = int(claims.template["total_quantity"])
    claimed = int(stats["claimed"])
    problems = []
    if claimed > total or len(claims.coupons) > total:
        problems.append(f"COUPONS OVER-CLAIMED: {claimed} claimed ({len(claims.coupons)} answers) of {total}")
    unanswered = sum(
        n for code, n in claims.refused.items() if code not in ("COUPONS_EXHAUSTED", "CLAIM_LIMIT_REACHED")
    )
    if not unanswered and claimed != len(claims.coupons):
        problems.append(f"the template counts {claimed} claims; the claimers got {len(claims.coupons)} coupons")
    if not unanswered and len(claims.coupons) != min(total, claims.claimers):
        problems.append(f"{claims.claimers} claimers for {total} coupons got {len(claims.coupons)}")
    if claims.replayed_other:
        problems.append(
            f"claims repeated with the same Idempotency-Key answered otherwise: {dict(claims.replayed_other)}"
        )
    if claims.second.get("CLAIMED"):
        problems.append(f"{claims.second['CLAIMED']} buyers claimed a second coupon (limit 1 per buyer)")
    if int(stats["in_wallets"]) != claimed:
        problems.append(f"{claimed} coupons claimed but {stats['in_wallets']} in wallets")
    for units, quote in claims.quotes:
        if int(quote["discount"]) != tier_discount(units * DEMO_PRICE):
            problems.append(f"a holder's quote of {units} units takes off {quote['discount']}")
    return problems


def settled_stats(admin: checker.Admin, template_id: int, used_expected: int) -> dict[str, Any]:
    """The template's stats once the coupon service followed the order events (or after COUPON_SETTLE_SECONDS)."""
    give_up = time.monotonic() + COUPON_SETTLE_SECONDS
    while True:
        stats: dict[str, Any] = admin.get("coupon", f"/admin/templates/{template_id}/stats")
        done = int(stats["locked"]) == 0 and int(stats["used"]) == used_expected
        if (done and int(stats["in_wallets"]) == int(stats["claimed"])) or time.monotonic() > give_up:
            return stats
        time.sleep(0.5)


def order_problems(settled: Settled, burst: BurstResult) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The orders whose purchase named a coupon (by reservation id), and every order priced other than expected."""
    named: dict[str, dict[str, Any]] = {}
    problems = []
    for state, found in settled.orders.items():
        for order in found:
            coupon = burst.coupon_of.get(order["reservation_id"])
            expected = tier_discount(int(order["subtotal"])) if coupon else 0
            if coupon:
                named[order["reservation_id"]] = order
            applied = [d["coupon_id"] for d in discounts(order)]
            if int(order["discount"]) != expected or applied != ([coupon] if coupon else []):
                problems.append(
                    f"{state} order {order['id']} (coupon {coupon or 'none'}) has discount {order['discount']}, "
                    f"expected {expected}; coupons {order.get('coupons')}"
                )
            if int(order["total"]) != int(order["subtotal"]) - int(order["discount"]):
                problems.append(f"order {order['id']}: total {order['total']} != subtotal - discount")
    return named, problems


@dataclass(frozen=True, slots=True)
class CouponOutcome:
    """The coupon half of the summary: counts read back after every order settled."""

    stats: dict[str, Any]
    applied: dict[str, list[dict[str, Any]]]  # state -> orders priced with a coupon
    named: dict[str, dict[str, Any]]  # reservation id -> order whose purchase named a coupon
    freed: int  # coupons of unpaid orders found available again
    given: int  # the paid orders' discounts, minor units


def outcome_lines(claims: Claims, burst: BurstResult, outcome: CouponOutcome) -> list[str]:
    """The summary lines of the coupons."""
    stats, applied = outcome.stats, outcome.applied
    used_expected = len(applied.get("paid", []))
    unpaid = sum(len(applied.get(state, [])) for state in CLOSED_STATES)
    priced = sum(len(found) for found in applied.values())
    rejected = Counter(
        r["code"] for o in outcome.named.values() for r in (o.get("coupons") or {}).get("rejections", [])
    )
    second = ", ".join(f"{code} {n:,}" for code, n in claims.second.most_common()) or "none"
    return [
        f"  coupon claims     {stats['claimed']} of {stats['total_quantity']} claimed by {claims.claimers:,} buyers, "
        f"{stats['in_wallets']} in wallets; same-key retries gave the same coupon {claims.replayed_same:,} times; "
        f"second claims: {second}",
        f"  coupon orders     {len(burst.coupon_of):,} purchases named a coupon -> {len(outcome.named):,} orders, "
        f"{priced:,} priced with it (paid {used_expected:,}, expired/cancelled {unpaid:,})"
        + (f"; rejected: {', '.join(f'{c} {n}' for c, n in rejected.most_common())}" if rejected else ""),
        f"  coupon stats      claimed {stats['claimed']}, used {stats['used']} (paid orders with a coupon "
        f"{used_expected}), locked {stats['locked']}, discount given {seed.money(int(stats['discount_given']))} "
        f"(paid orders' discounts {seed.money(outcome.given)})",
        f"  coupons freed     {outcome.freed:,} of {unpaid:,} coupons of unpaid orders are available again "
        "in their wallets",
    ]


def outcome_problems(burst: BurstResult, settled: Settled, outcome: CouponOutcome) -> list[str]:
    """Used coupons against paid orders, nothing left locked, freed coupons back, discounts and GMV adding up."""
    stats, applied = outcome.stats, outcome.applied
    used_expected = len(applied.get("paid", []))
    unpaid = sum(len(applied.get(state, [])) for state in CLOSED_STATES)
    gmv = sum(int(o["total"]) for o in settled.orders.get("paid", []))
    problems = []
    if int(stats["used"]) != used_expected:
        problems.append(f"{stats['used']} coupons used; {used_expected} paid orders carry one")
    if int(stats["locked"]):
        problems.append(f"{stats['locked']} coupons still locked after every order settled")
    if int(stats["discount_given"]) != outcome.given:
        problems.append(f"discount given {stats['discount_given']} != the paid orders' discounts {outcome.given}")
    if outcome.freed != unpaid:
        problems.append(f"only {outcome.freed} of the {unpaid} coupons of unpaid orders are available again")
    if int(settled.order_stats["gmv"]) != gmv:
        problems.append(f"GMV {settled.order_stats['gmv']} != the paid orders' totals {gmv}")
    if len(outcome.named) != len(burst.coupon_of):
        problems.append(
            f"{len(burst.coupon_of)} purchases named a coupon; {len(outcome.named)} of their orders were found"
        )
    return problems


def coupon_summary(
    admin: checker.Admin,
    wallet: Callable[[str], set[str]],
    *,
    claims: Claims,
    burst: BurstResult,
    settled: Settled,
) -> tuple[list[str], list[str]]:
    """What became of the coupons (the orders that named one, used, freed again): summary lines and problems.

    `wallet(user)` is the coupons available in that shopper's wallet. Used coupons must be those of the paid orders
    that applied one; those of expired or cancelled orders must be available again (nothing left locked).
    """
    applied = {state: [o for o in found if discounts(o)] for state, found in settled.orders.items()}
    stats = settled_stats(admin, int(claims.template["id"]), len(applied.get("paid", [])))
    named, problems = order_problems(settled, burst)
    unpaid = [o for state in CLOSED_STATES for o in applied.get(state, [])]
    freed = sum(
        all(d["coupon_id"] in wallet(burst.reservations[o["reservation_id"]][0]) for d in discounts(o)) for o in unpaid
    )
    given = sum(int(o["discount"]) for o in applied.get("paid", []))
    outcome = CouponOutcome(stats=stats, applied=applied, named=named, freed=freed, given=given)
    problems = claims_problems(claims, stats) + problems + outcome_problems(burst, settled, outcome)
    return outcome_lines(claims, burst, outcome), problems

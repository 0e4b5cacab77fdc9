"""The coupon pricing engine as a storefront sees it: quotes, rejections, best combination, partial refunds."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import combinations
from typing import Any

import pytest

from services.coupon.pricing import AppliedDiscount, Quote, quote, refund_amount
from services.coupon.rules import CouponRule, Customer, Kind, Line, Tier, validate_rule

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ALICE = Customer("alice")
MEMBER = Customer("bob", is_member=True, paid_orders=3)
NEWCOMER = Customer("carol", paid_orders=0)
# spend 300 save 50, spend 500 save 100, spend 800 save 180 (cents)
TIERS = (Tier(30000, 5000), Tier(50000, 10000), Tier(80000, 18000))


def tiered(coupon_id: str = "tier", **kw: Any) -> CouponRule:
    return CouponRule(coupon_id, 1, "tiered", **{"tiers": TIERS, **kw})


def fixed(coupon_id: str, amount_off: int, **kw: Any) -> CouponRule:
    return CouponRule(coupon_id, 2, "fixed_off", amount_off=amount_off, **kw)


def pct(coupon_id: str, percent_bp: int, **kw: Any) -> CouponRule:
    return CouponRule(coupon_id, 3, "percent_off", percent_bp=percent_bp, **kw)


def order_of(*amounts: int) -> list[Line]:
    """One line per amount, each a distinct sku bought once."""
    return [Line(f"sku-{i}", None, amount, 1) for i, amount in enumerate(amounts)]


def codes(q: Quote) -> dict[str, str]:
    return {r.coupon_id: r.code for r in q.rejections}


def applied(q: Quote) -> dict[str, int]:
    return {d.coupon_id: d.amount for d in q.discounts}


# --- the tiered coupon and partial refunds ---------------------------------------------------------------------


def test_order_of_600_gets_100_off_at_the_500_tier() -> None:
    q = quote(order_of(45000, 15000), ALICE, [tiered()], now=NOW)
    assert (q.subtotal, q.discount, q.total) == (60000, 10000, 50000)
    assert q.discounts[0].reason == "spend 500.00 save 100.00 (in-scope 600.00)"
    assert q.rejections == ()


def test_each_tier_boundary_is_inclusive() -> None:
    for spend, off in [(29999, 0), (30000, 5000), (49999, 5000), (50000, 10000), (79999, 10000), (80000, 18000)]:
        assert quote(order_of(spend), ALICE, [tiered()], now=NOW).discount == off


def test_refunding_a_line_that_drops_the_order_a_tier_refunds_paid_minus_still_owed() -> None:
    lines = order_of(45000, 15000)
    refund = refund_amount(lines=lines, refunded=[lines[1]], customer=ALICE, coupons=[tiered()], now=NOW)
    # 500.00 paid; the kept 450.00 earns only 50.00 off, so it still costs 400.00
    assert refund == 10000


def test_refunding_everything_refunds_exactly_what_was_paid() -> None:
    lines = [Line("tee", 7, 15000, 2), Line("cap", None, 30000, 1)]
    coupons = [tiered(), fixed("f", 2000, scope="skus", scope_skus=frozenset({"cap"}))]
    paid = quote(lines, ALICE, coupons, now=NOW, chosen=["tier", "f"]).total
    assert paid == 60000 - 10000 - 2000
    assert refund_amount(lines=lines, refunded=lines, customer=ALICE, coupons=coupons, now=NOW) == paid


def test_partial_quantity_refund_and_no_coupon_refund() -> None:
    lines = [Line("tee", 7, 20000, 4)]
    refunded = [Line("tee", 7, 20000, 1)]
    # 800.00 earned 180.00; 600.00 kept earns 100.00: paid 620.00, still owed 500.00
    assert refund_amount(lines=lines, refunded=refunded, customer=ALICE, coupons=[tiered()], now=NOW) == 12000
    assert refund_amount(lines=lines, refunded=refunded, customer=ALICE, coupons=[], now=NOW) == 20000


def test_refund_is_never_negative() -> None:
    # returning a 0.01 line costs the order its 500 tier (100.00 -> 50.00): the customer owes more, gets 0 back
    lines = order_of(49999, 1)
    assert refund_amount(lines=lines, refunded=[lines[1]], customer=ALICE, coupons=[tiered()], now=NOW) == 0


def test_refund_still_honours_coupons_that_since_were_used_or_expired() -> None:
    lines = order_of(45000, 15000)
    coupons = [
        tiered(state="used", valid_until=NOW - timedelta(days=1)),
        CouponRule("welcome", 4, "new_user", amount_off=1000, state="used"),
    ]
    # priced when carol was new; by refund time she has a paid order and the coupons are used and expired
    after = Customer("carol", paid_orders=1)
    refund = refund_amount(lines=lines, refunded=[lines[1]], customer=after, coupons=coupons, now=NOW)
    assert refund == (60000 - 10000 - 1000) - (45000 - 5000 - 1000)


def test_refunding_more_than_bought_or_an_unknown_line_is_an_error() -> None:
    lines = [Line("tee", 7, 20000, 2)]
    with pytest.raises(ValueError, match="order has 2"):
        refund_amount(lines=lines, refunded=[Line("tee", 7, 20000, 3)], customer=ALICE, coupons=[], now=NOW)
    with pytest.raises(ValueError, match="order has 0"):
        refund_amount(lines=lines, refunded=[Line("tee", 8, 20000, 1)], customer=ALICE, coupons=[], now=NOW)


# --- each rejection code ---------------------------------------------------------------------------------------


def test_below_threshold_says_how_much_more_to_spend() -> None:
    q = quote(order_of(15000), ALICE, [tiered(), fixed("f", 1000, min_spend=20000)], now=NOW)
    assert codes(q) == {"f": "BELOW_THRESHOLD", "tier": "BELOW_THRESHOLD"}
    detail = {r.coupon_id: r.detail for r in q.rejections}
    assert "spend 150.00 more to reach 300.00" in detail["tier"]
    assert "spend 50.00 more to reach 200.00" in detail["f"]
    assert (q.discount, q.total) == (0, 15000)


def test_out_of_scope() -> None:
    c = fixed("f", 1000, scope="skus", scope_skus=frozenset({"hat"}))
    assert codes(quote(order_of(5000), ALICE, [c], now=NOW)) == {"f": "OUT_OF_SCOPE"}


def test_validity_window_is_from_inclusive_until_exclusive() -> None:
    window = {"valid_from": NOW, "valid_until": NOW + timedelta(hours=1)}
    c = fixed("f", 1000, **window)
    assert applied(quote(order_of(5000), ALICE, [c], now=NOW)) == {"f": 1000}
    assert codes(quote(order_of(5000), ALICE, [c], now=NOW - timedelta(seconds=1))) == {"f": "NOT_YET_VALID"}
    assert codes(quote(order_of(5000), ALICE, [c], now=NOW + timedelta(hours=1))) == {"f": "EXPIRED"}
    assert codes(quote(order_of(5000), ALICE, [fixed("g", 1, state="expired")], now=NOW)) == {"g": "EXPIRED"}


def test_used_or_locked_elsewhere_is_already_used_but_our_own_lock_is_usable() -> None:
    coupons = [fixed("used", 1000, state="used"), fixed("held", 500, state="locked", locked_by="o-1")]
    q = quote(order_of(5000), ALICE, coupons, now=NOW, order_id="o-2")
    assert codes(q) == {"used": "ALREADY_USED", "held": "ALREADY_USED"}
    assert codes(quote(order_of(5000), ALICE, coupons, now=NOW)) == {"used": "ALREADY_USED", "held": "ALREADY_USED"}
    q = quote(order_of(5000), ALICE, coupons, now=NOW, order_id="o-1")
    assert applied(q) == {"held": 500}
    assert codes(q) == {"used": "ALREADY_USED"}


def test_member_only_and_new_user() -> None:
    coupons = [
        CouponRule("m-pct", 5, "member_only", percent_bp=1000),
        CouponRule("m-amt", 6, "member_only", amount_off=700, stacking_group="member"),
        CouponRule("m-amt2", 6, "member_only", amount_off=600, stacking_group="member"),
        CouponRule("new", 7, "new_user", amount_off=1500, min_spend=10000),
        CouponRule("new-pct", 8, "new_user", percent_bp=2000, cap=3000),
    ]
    lines = order_of(20000)
    member = quote(lines, MEMBER, coupons, now=NOW)
    assert applied(member) == {"m-amt": 700, "m-pct": 2000}
    assert codes(member) == {"new": "NOT_A_NEW_USER", "new-pct": "NOT_A_NEW_USER"}
    newcomer = quote(lines, NEWCOMER, coupons, now=NOW)
    assert applied(newcomer) == {"new": 1500, "new-pct": 3000}  # 20% of 200.00 = 40.00, capped at 30.00
    assert codes(newcomer) == {"m-amt": "NOT_A_MEMBER", "m-amt2": "NOT_A_MEMBER", "m-pct": "NOT_A_MEMBER"}


def test_unknown_coupon_and_chosen_twice() -> None:
    q = quote(order_of(5000), ALICE, [fixed("f", 1000)], now=NOW, chosen=["nope", "f", "f"])
    assert applied(q) == {"f": 1000}
    assert [(r.coupon_id, r.code) for r in q.rejections] == [("nope", "UNKNOWN_COUPON"), ("f", "STACKING_CONFLICT")]


def test_invalid_template_and_zero_discount_are_rejected_not_applied() -> None:
    broken = pct("broken", 12000)
    tiny = pct("tiny", 100)  # 1% of 0.99 rounds down to 0
    q = quote(order_of(99), ALICE, [broken, tiny], now=NOW)
    assert codes(q) == {"broken": "INVALID_COUPON", "tiny": "NO_DISCOUNT"}
    assert q.total == 99


# --- amounts: percent, caps, scope, subtotal cap, no threshold ---------------------------------------------------


def test_percent_off_rounds_down_and_respects_cap_and_min_spend() -> None:
    assert quote(order_of(60000), ALICE, [pct("p", 500)], now=NOW).discount == 3000  # 5% of 600.00
    assert quote(order_of(1999), ALICE, [pct("p", 1250)], now=NOW).discount == 249  # 249.875 -> 249
    capped = quote(order_of(60000), ALICE, [pct("p", 1000, cap=2500)], now=NOW)
    assert capped.discount == 2500
    assert "capped at 25.00" in capped.discounts[0].reason
    below = quote(order_of(9999), ALICE, [pct("p", 1000, min_spend=10000)], now=NOW)
    assert codes(below) == {"p": "BELOW_THRESHOLD"}
    assert quote(order_of(12345), ALICE, [pct("p", 10000)], now=NOW).total == 0


def test_scope_by_sku_and_by_sale_counts_only_those_lines() -> None:
    lines = [Line("tee", 1, 20000, 2), Line("hat", 2, 10000, 1), Line("mug", None, 5000, 1)]
    by_sku = pct("sku", 1000, scope="skus", scope_skus=frozenset({"hat", "mug"}))
    by_sale = CouponRule("sale", 9, "tiered", tiers=TIERS, scope="sales", scope_sales=frozenset({1}))
    q = quote(lines, ALICE, [by_sku, by_sale], now=NOW)
    assert applied(q) == {"sale": 5000, "sku": 1500}  # 400.00 in sale 1 -> tier 300; 10% of 150.00
    assert q.discounts[0].reason == "spend 300.00 save 50.00 (in-scope 400.00)"
    no_sale = fixed("nosale", 100, scope="sales", scope_sales=frozenset({3}))
    assert codes(quote(lines, ALICE, [no_sale], now=NOW)) == {"nosale": "OUT_OF_SCOPE"}


def test_fixed_and_no_threshold_never_exceed_the_in_scope_amount() -> None:
    coupons = [
        CouponRule("nt", 10, "no_threshold", amount_off=5000, scope="skus", scope_skus=frozenset({"sku-0"})),
        CouponRule("comp", 11, "compensation", amount_off=800, min_spend=1000),
    ]
    q = quote(order_of(300, 2000), ALICE, coupons, now=NOW)
    assert applied(q) == {"comp": 800, "nt": 300}
    assert q.total == 2300 - 1100


def test_discounts_are_capped_at_the_subtotal_and_still_add_up() -> None:
    coupons = [fixed("a", 3000), fixed("b", 3000), fixed("c", 3000)]
    q = quote(order_of(5000), ALICE, coupons, now=NOW, chosen=["c", "a", "b"])
    assert [(d.coupon_id, d.amount) for d in q.discounts] == [("c", 3000), ("a", 2000), ("b", 0)]
    assert (q.discount, q.total) == (5000, 0)
    assert sum(d.amount for d in q.discounts) == q.discount
    assert "reduced from 30.00 to 20.00" in q.discounts[1].reason


def test_best_mode_does_not_spend_coupons_it_does_not_need_to_reach_the_cap() -> None:
    coupons = [fixed("a", 3000), fixed("b", 3000), fixed("c", 6000)]
    q = quote(order_of(5000), ALICE, coupons, now=NOW)
    assert applied(q) == {"c": 5000}  # one coupon reaches 0; a+b would too but with two coupons


# --- stacking --------------------------------------------------------------------------------------------------


def test_chosen_two_of_one_group_rejects_the_later_one() -> None:
    coupons = [fixed("a", 1000, stacking_group="shop"), fixed("b", 2000, stacking_group="shop"), fixed("c", 500)]
    q = quote(order_of(50000), ALICE, coupons, now=NOW, chosen=["a", "c", "b"])
    assert [d.coupon_id for d in q.discounts] == ["a", "c"]
    assert codes(q) == {"b": "STACKING_CONFLICT"}
    assert "already has coupon a" in q.rejections[0].detail


def test_chosen_exclusive_applies_alone_and_is_rejected_with_others() -> None:
    coupons = [fixed("x", 9000, exclusive=True), fixed("y", 8000, exclusive=True), fixed("a", 1000)]
    alone = quote(order_of(50000), ALICE, coupons, now=NOW, chosen=["x"])
    assert applied(alone) == {"x": 9000}
    with_other = quote(order_of(50000), ALICE, coupons, now=NOW, chosen=["x", "a"])
    assert applied(with_other) == {"a": 1000}
    assert codes(with_other) == {"x": "STACKING_CONFLICT"}
    both = quote(order_of(50000), ALICE, coupons, now=NOW, chosen=["x", "y"])
    assert applied(both) == {}
    assert codes(both) == {"x": "STACKING_CONFLICT", "y": "STACKING_CONFLICT"}
    # an inapplicable companion does not block the exclusive one
    expired = replace(coupons[2], valid_until=NOW)
    q = quote(order_of(50000), ALICE, [coupons[0], expired], now=NOW, chosen=["a", "x"])
    assert applied(q) == {"x": 9000}
    assert codes(q) == {"a": "EXPIRED"}


def test_best_mode_compares_the_stack_with_the_best_exclusive() -> None:
    stack = [fixed("a", 3000, stacking_group="g"), fixed("b", 4000, stacking_group="g"), fixed("c", 2000)]
    lines = order_of(50000)
    assert applied(quote(lines, ALICE, [*stack, fixed("x", 5000, exclusive=True)], now=NOW)) == {"b": 4000, "c": 2000}
    assert applied(quote(lines, ALICE, [*stack, fixed("x", 7000, exclusive=True)], now=NOW)) == {"x": 7000}
    # a tie in discount goes to fewer coupons
    assert applied(quote(lines, ALICE, [*stack, fixed("x", 6000, exclusive=True)], now=NOW)) == {"x": 6000}


def test_best_mode_reports_only_inapplicable_coupons() -> None:
    coupons = [fixed("a", 1000, stacking_group="g"), fixed("b", 2000, stacking_group="g"), tiered(state="used")]
    q = quote(order_of(50000), ALICE, coupons, now=NOW)
    assert applied(q) == {"b": 2000}
    assert codes(q) == {"tier": "ALREADY_USED"}  # "a" applies but lost to "b": not a rejection


def test_ties_go_to_the_smaller_coupon_ids() -> None:
    coupons = [fixed(cid, 1000, stacking_group="g") for cid in ("m", "b", "z")]
    assert applied(quote(order_of(50000), ALICE, coupons, now=NOW)) == {"b": 1000}


# --- templates -------------------------------------------------------------------------------------------------


def test_validate_rule_accepts_good_templates() -> None:
    good = [
        tiered(),
        fixed("f", 100, min_spend=1000),
        pct("p", 10000, cap=5000),
        CouponRule("n", 1, "no_threshold", amount_off=1),
        CouponRule("m", 1, "member_only", percent_bp=1, cap=100, scope="sales", scope_sales=frozenset({4})),
        CouponRule("u", 1, "new_user", amount_off=100, valid_from=NOW, valid_until=NOW + timedelta(days=1)),
        CouponRule("c", 1, "compensation", amount_off=100, scope="skus", scope_skus=frozenset({"tee"})),
    ]
    for rule in good:
        assert validate_rule(rule) == [], rule


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        (tiered(tiers=(Tier(50000, 10000), Tier(30000, 5000))), "tiers out of order"),
        (tiered(tiers=(Tier(30000, 5000), Tier(50000, 5000))), "tiers out of order"),
        (tiered(tiers=()), "at least one tier"),
        (tiered(tiers=(Tier(0, 5000),)), "must be > 0"),
        (pct("p", 10001), "at most 10000"),
        (pct("p", 0), "needs percent_bp"),
        (pct("p", -5), "percent_bp must be >= 0"),
        (fixed("f", -100), "amount_off must be >= 0"),
        (fixed("f", 100, min_spend=-1), "min_spend must be >= 0"),
        (pct("p", 500, cap=-1), "cap must be >= 0"),
        (CouponRule("n", 1, "no_threshold", amount_off=100, min_spend=500), "no_threshold must have min_spend 0"),
        (CouponRule("c", 1, "compensation"), "needs amount_off > 0"),
        (CouponRule("m", 1, "member_only"), "exactly one of"),
        (CouponRule("u", 1, "new_user", amount_off=100, percent_bp=100), "exactly one of"),
        (fixed("f", 100, scope="skus"), "needs at least one sku"),
        (fixed("f", 100, scope="sales"), "needs at least one sale"),
        (fixed("f", 100, valid_from=NOW, valid_until=NOW), "before valid_until"),
        (fixed("f", 100, valid_until=datetime(2025, 1, 1)), "timezone-aware"),
    ],
)
def test_validate_rule_catches_bad_templates(rule: CouponRule, words: str) -> None:
    problems = validate_rule(rule)
    assert any(words in p for p in problems), problems


# --- determinism and the best-combination search ---------------------------------------------------------------


def random_case(rng: random.Random) -> tuple[list[Line], Customer, list[CouponRule]]:
    """A random order and wallet: up to 8 coupons with groups, exclusives, scopes, thresholds and ineligibles."""
    lines = [
        Line(rng.choice(["tee", "hat", "mug"]), rng.choice([None, 1, 2]), rng.choice([0, 99, 2500, 10000]), q)
        for q in (rng.randint(1, 3) for _ in range(rng.randint(1, 4)))
    ]
    customer = Customer("u", is_member=rng.random() < 0.5, paid_orders=rng.choice([0, 1]))
    coupons: list[CouponRule] = []
    for i in range(rng.randint(0, 8)):
        kind: Kind = rng.choice(["fixed_off", "percent_off", "tiered", "no_threshold", "member_only", "new_user"])
        extra: dict[str, Any] = {
            "stacking_group": rng.choice([None, None, "g1", "g2"]),
            "exclusive": rng.random() < 0.2,
            "state": rng.choice(["available"] * 6 + ["used", "expired"]),
        }
        scope = rng.choice(["all", "all", "skus", "sales"])
        if scope == "skus":
            extra.update(scope="skus", scope_skus=frozenset({rng.choice(["tee", "hat", "mug"])}))
        elif scope == "sales":
            extra.update(scope="sales", scope_sales=frozenset({rng.choice([1, 2])}))
        amount = rng.choice([500, 1000, 1000, 3000, 20000])
        if kind == "tiered":
            extra["tiers"] = (Tier(5000, amount), Tier(20000, amount * 2))
        elif kind == "percent_off" or (kind in ("member_only", "new_user") and rng.random() < 0.5):
            extra.update(percent_bp=rng.choice([500, 1000, 5000]), cap=rng.choice([None, 1000]))
        else:
            extra["amount_off"] = amount
        if kind != "tiered" and kind != "no_threshold":
            extra["min_spend"] = rng.choice([0, 0, 10000])
        coupons.append(CouponRule(f"c{i}", i, kind, **extra))
    return lines, customer, coupons


def brute_force_best(lines: list[Line], customer: Customer, coupons: list[CouponRule]) -> tuple[int, list[str]]:
    """Every allowed subset, best by (discount, fewer coupons, smaller sorted ids)."""
    subtotal = sum(line.amount for line in lines)
    single: dict[str, int] = {}
    for c in coupons:
        q = quote(lines, customer, coupons, now=NOW, chosen=[c.coupon_id])
        if q.discounts:
            single[c.coupon_id] = q.discounts[0].amount
    rules = {c.coupon_id: c for c in coupons}
    best: tuple[int, int, tuple[str, ...]] = (0, 0, ())
    for size in range(1, len(single) + 1):
        for combo in combinations(sorted(single), size):
            groups = [rules[cid].stacking_group for cid in combo if rules[cid].stacking_group is not None]
            if len(groups) != len(set(groups)):
                continue
            if size > 1 and any(rules[cid].exclusive for cid in combo):
                continue
            key = (-min(sum(single[cid] for cid in combo), subtotal), size, combo)
            best = min(best, key)
    return -best[0], list(best[2])


def test_best_combination_matches_brute_force_on_random_wallets() -> None:
    rng = random.Random(20250601)
    for case in range(400):
        lines, customer, coupons = random_case(rng)
        q = quote(lines, customer, coupons, now=NOW)
        discount, ids = brute_force_best(lines, customer, coupons)
        assert (q.discount, [d.coupon_id for d in q.discounts]) == (discount, ids), case
        assert q.total == q.subtotal - q.discount >= 0
        # the same coupons chosen explicitly price the same
        assert quote(lines, customer, coupons, now=NOW, chosen=ids).discount == discount


def test_same_input_same_output_and_wallet_order_does_not_matter() -> None:
    rng = random.Random(7)
    for _ in range(100):
        lines, customer, coupons = random_case(rng)
        first = quote(lines, customer, coupons, now=NOW)
        assert quote(lines, customer, coupons, now=NOW) == first
        shuffled = coupons[:]
        rng.shuffle(shuffled)
        assert quote(lines, customer, shuffled, now=NOW) == first


def test_discounts_follow_the_chosen_order() -> None:
    coupons = [fixed("a", 100), fixed("b", 200), pct("c", 100)]
    q = quote(order_of(50000), ALICE, coupons, now=NOW, chosen=["c", "a", "b"])
    assert q.discounts == (
        AppliedDiscount("c", 3, "percent_off", 500, "1% off = 5.00 (in-scope 500.00)"),
        AppliedDiscount("a", 2, "fixed_off", 100, "save 1.00 (in-scope 500.00)"),
        AppliedDiscount("b", 2, "fixed_off", 200, "save 2.00 (in-scope 500.00)"),
    )


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="quantity"):
        Line("tee", None, 100, 0)
    with pytest.raises(ValueError, match="unit_price"):
        Line("tee", None, -1, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        quote(order_of(100), ALICE, [], now=datetime(2025, 6, 1))
    with pytest.raises(ValueError, match="twice"):
        quote(order_of(100), ALICE, [fixed("a", 1), fixed("a", 2)], now=NOW)

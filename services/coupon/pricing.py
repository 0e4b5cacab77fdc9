"""The coupon pricing engine: quotes with stacking rules, the best combination of a wallet, partial refunds.

Pure functions over frozen dataclasses: no I/O, no clock (the caller passes `now`), no floats. Money is an
integer in minor units; percentages are basis points (500 = 5%); every discount is rounded down to the
minor unit. Amounts in `reason` texts are shown with two decimals (display only). What it prices (order
lines, coupon rules, the customer) and template validation are in `services.coupon.rules`.

Rejection codes (`Rejection.code`), checked in this order, first failure wins:
  UNKNOWN_COUPON     a chosen id is not among the customer's coupons
  INVALID_COUPON     the template breaks `validate_rule` (detail lists the problems)
  ALREADY_USED       state "used", or "locked" by an order other than `order_id`
  EXPIRED            state "expired", or now >= valid_until
  NOT_YET_VALID      now < valid_from
  NOT_A_MEMBER       member_only and the customer is not a member
  NOT_A_NEW_USER     new_user and the customer already has a paid order
  OUT_OF_SCOPE       no line of the order is in the coupon's scope
  BELOW_THRESHOLD    in-scope amount under min_spend / the lowest tier (detail says how much more to spend)
  NO_DISCOUNT        everything else holds but the discount rounds to 0 (e.g. free lines); applying it would
                     spend the coupon for nothing
  STACKING_CONFLICT  (chosen mode) the coupon breaks the stacking rules; see `quote`
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from services.coupon.rules import BP_WHOLE, CouponRule, Customer, Line, money, percent, validate_rule


@dataclass(frozen=True, slots=True)
class AppliedDiscount:
    """A coupon applied to the order, with the amount it takes off and why."""

    coupon_id: str
    template_id: int
    kind: str
    amount: int
    reason: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """A coupon that does not apply to the order, with a stable code and a human detail."""

    coupon_id: str
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Quote:
    """What the order costs: subtotal - discount = total, the discounts applied and the coupons rejected."""

    subtotal: int
    discounts: tuple[AppliedDiscount, ...]
    discount: int
    total: int
    rejections: tuple[Rejection, ...]


def quote(
    lines: Sequence[Line],
    customer: Customer,
    coupons: Sequence[CouponRule],
    *,
    now: datetime,
    chosen: Sequence[str] | None = None,
    order_id: str | None = None,
) -> Quote:
    """Price an order with the customer's coupons: the ones `chosen`, or the best combination when None.

    Each coupon's discount is computed on its in-scope amount, independently of the others; the order's
    discount is their sum capped at the subtotal (the last-applied discounts are reduced so the amounts add up).

    chosen given: coupons are applied in the given order. Stacking is decided among the chosen coupons that
    are otherwise applicable (every check above STACKING_CONFLICT passed), so an expired or below-threshold
    coupon never blocks another:
      - an exclusive coupon is applied only if it is the sole applicable chosen coupon; otherwise every
        exclusive one is rejected (STACKING_CONFLICT) and the non-exclusive ones are kept. Two exclusive
        coupons chosen together are therefore both rejected;
      - among the non-exclusive ones, the first of each stacking_group (in the given order) is applied and
        later ones of that group are rejected; ungrouped coupons stack freely;
      - an id chosen twice is rejected (STACKING_CONFLICT) the second time.
    Discounts and rejections come in the given order.

    chosen None: the combination with the largest discount (after the subtotal cap) that respects the rules
    (at most one coupon per stacking group, ungrouped ones stack freely, an exclusive coupon alone); ties go
    to fewer coupons, then to the lexicographically smaller sorted coupon ids. Discounts are listed by
    coupon_id. Coupons that apply but were not picked are not rejections; the ones that do not apply are
    reported (sorted by coupon_id) so a wallet can say why.

    A coupon locked by `order_id` is usable (re-quoting an order that holds it). `now` must be timezone-aware.
    Raises ValueError for a naive `now` or two coupons with the same coupon_id.
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return _price(lines, customer, coupons, now=now, chosen=chosen, order_id=order_id, settled=False)


def settled_total(lines: Sequence[Line], customer: Customer, coupons: Sequence[CouponRule]) -> int:
    """What an order costs with the coupons it redeemed, eligibility settled (as `refund_amount` sees it)."""
    ids = [c.coupon_id for c in coupons]
    return _price(lines, customer, coupons, now=None, chosen=ids, order_id=None, settled=True).total


def refund_amount(
    *,
    lines: Sequence[Line],
    refunded: Sequence[Line],
    customer: Customer,
    coupons: Sequence[CouponRule],
    now: datetime,
) -> int:
    """How much to give back when some lines of a paid order are returned.

    The refund is what the customer paid minus what the kept lines would cost with the same coupons:
        refund = paid total of the whole order - total of the kept lines, priced with the coupons the order used

    So a coupon keeps its full effect only while the kept lines still earn it: if returning a line takes the
    order below the tier (or threshold) it was discounted at, the refund shrinks by the discount no longer
    earned. Example, tiers spend 300 save 50 / spend 500 save 100: an order of 600.00 paid 500.00; returning
    a 150.00 line leaves 450.00, which earns only 50.00 off, so the kept lines cost 400.00 and the refund is
    100.00. Returning everything refunds exactly what was paid. The refund is never negative and never more
    than what was paid.

    `coupons` are the coupons the order redeemed, in the order they were applied. Their eligibility (state,
    validity window, member / new-user status) was settled when the order was priced and is not checked
    again, so a coupon that has since been used or expired, or a customer who is no longer a new user, still
    counts; only the amount rules (scope, thresholds, tiers, caps) are re-applied. `now` is accepted for
    symmetry with `quote` and does not change the result.

    `refunded` lines are matched to order lines by sku, sale_id and unit_price; refunding more than was
    bought, or a line the order does not have, raises ValueError.
    """
    del now  # eligibility is settled; see the docstring
    kept = _remove_refunded(lines, refunded)
    ids = [c.coupon_id for c in coupons]
    paid = _price(lines, customer, coupons, now=None, chosen=ids, order_id=None, settled=True)
    used = [d.coupon_id for d in paid.discounts]
    still_owed = _price(kept, customer, coupons, now=None, chosen=used, order_id=None, settled=True)
    return max(0, paid.total - still_owed.total)


def _remove_refunded(lines: Sequence[Line], refunded: Sequence[Line]) -> list[Line]:
    """The order's lines minus the refunded quantities (matched by sku, sale_id, unit_price)."""

    def key(line: Line) -> tuple[str, int | None, int]:
        return (line.sku, line.sale_id, line.unit_price)

    bought: Counter[tuple[str, int | None, int]] = Counter()
    for line in lines:
        bought[key(line)] += line.quantity
    to_remove: Counter[tuple[str, int | None, int]] = Counter()
    for line in refunded:
        to_remove[key(line)] += line.quantity
    for k, quantity in to_remove.items():
        if quantity > bought[k]:
            sku, sale_id, unit_price = k
            raise ValueError(
                f"refunding {quantity} of sku {sku} (sale {sale_id}, unit price {money(unit_price)}) "
                f"but the order has {bought[k]}"
            )
    kept: list[Line] = []
    for line in lines:
        take = min(line.quantity, to_remove[key(line)])
        to_remove[key(line)] -= take
        if line.quantity > take:
            kept.append(replace(line, quantity=line.quantity - take))
    return kept


def _price(
    lines: Sequence[Line],
    customer: Customer,
    coupons: Sequence[CouponRule],
    *,
    now: datetime | None,
    chosen: Sequence[str] | None,
    order_id: str | None,
    settled: bool,
) -> Quote:
    """quote() without the argument checks; settled=True skips eligibility (state, window, customer)."""
    by_id: dict[str, CouponRule] = {}
    for rule in coupons:
        if rule.coupon_id in by_id:
            raise ValueError(f"coupon {rule.coupon_id} appears twice")
        by_id[rule.coupon_id] = rule
    subtotal = sum(line.amount for line in lines)

    picked: list[AppliedDiscount]
    rejections: list[Rejection]
    if chosen is None:
        outcomes = [
            _evaluate(by_id[cid], lines, customer, now=now, order_id=order_id, settled=settled) for cid in sorted(by_id)
        ]
        applicable = [o for o in outcomes if isinstance(o, AppliedDiscount)]
        rejections = [o for o in outcomes if isinstance(o, Rejection)]
        picked = _best_combination(applicable, by_id, subtotal)
    else:
        picked, rejections = _apply_chosen(chosen, lines, customer, by_id, now=now, order_id=order_id, settled=settled)

    discounts = _cap_at_subtotal(picked, subtotal)
    discount = sum(d.amount for d in discounts)
    return Quote(
        subtotal=subtotal,
        discounts=tuple(discounts),
        discount=discount,
        total=subtotal - discount,
        rejections=tuple(rejections),
    )


def _apply_chosen(
    chosen: Sequence[str],
    lines: Sequence[Line],
    customer: Customer,
    by_id: dict[str, CouponRule],
    *,
    now: datetime | None,
    order_id: str | None,
    settled: bool,
) -> tuple[list[AppliedDiscount], list[Rejection]]:
    """Apply the chosen coupons in the caller's order under the stacking rules documented on `quote`."""
    outcomes: list[AppliedDiscount | Rejection] = []
    seen: set[str] = set()
    for cid in chosen:
        if cid in seen:
            outcomes.append(Rejection(cid, "STACKING_CONFLICT", "chosen more than once"))
            continue
        seen.add(cid)
        rule = by_id.get(cid)
        if rule is None:
            outcomes.append(Rejection(cid, "UNKNOWN_COUPON", "not one of the customer's coupons"))
            continue
        outcomes.append(_evaluate(rule, lines, customer, now=now, order_id=order_id, settled=settled))

    applicable = sum(1 for o in outcomes if isinstance(o, AppliedDiscount))
    group_holder: dict[str, str] = {}
    for i, outcome in enumerate(outcomes):
        if not isinstance(outcome, AppliedDiscount):
            continue
        rule = by_id[outcome.coupon_id]
        if rule.exclusive:
            if applicable > 1:
                outcomes[i] = Rejection(
                    rule.coupon_id,
                    "STACKING_CONFLICT",
                    f"exclusive: cannot be combined with other coupons ({applicable - 1} other applicable chosen)",
                )
            continue
        group = rule.stacking_group
        if group is None:
            continue
        holder = group_holder.setdefault(group, rule.coupon_id)
        if holder != rule.coupon_id:
            outcomes[i] = Rejection(
                rule.coupon_id, "STACKING_CONFLICT", f"stacking group {group!r} already has coupon {holder}"
            )
    return (
        [o for o in outcomes if isinstance(o, AppliedDiscount)],
        [o for o in outcomes if isinstance(o, Rejection)],
    )


def _cap_at_subtotal(picked: list[AppliedDiscount], subtotal: int) -> list[AppliedDiscount]:
    """Reduce the last-applied discounts so their sum never exceeds the subtotal."""
    left = subtotal
    capped: list[AppliedDiscount] = []
    for d in picked:
        amount = min(d.amount, left)
        left -= amount
        if amount < d.amount:
            note = f"; reduced from {money(d.amount)} to {money(amount)} so the total does not go below 0"
            d = replace(d, amount=amount, reason=d.reason + note)
        capped.append(d)
    return capped


def _evaluate(
    rule: CouponRule,
    lines: Sequence[Line],
    customer: Customer,
    *,
    now: datetime | None,
    order_id: str | None,
    settled: bool,
) -> AppliedDiscount | Rejection:
    """What one coupon takes off this order on its own, or why it does not apply."""
    cid = rule.coupon_id
    problems = validate_rule(rule)
    if problems:
        return Rejection(cid, "INVALID_COUPON", "; ".join(problems))
    if not settled:
        assert now is not None  # quote() always passes a clock; only refunds run settled
        refusal = _eligibility(rule, customer, now, order_id)
        if refusal is not None:
            return refusal

    in_scope_lines = [line for line in lines if _in_scope(rule, line)]
    if not in_scope_lines:
        return Rejection(cid, "OUT_OF_SCOPE", f"no line of the order is in scope ({_describe_scope(rule)})")
    in_scope = sum(line.amount for line in in_scope_lines)
    threshold = rule.tiers[0].spend if rule.kind == "tiered" else rule.min_spend
    if in_scope < threshold:
        return Rejection(
            cid,
            "BELOW_THRESHOLD",
            f"spend {money(threshold - in_scope)} more to reach {money(threshold)} (in-scope {money(in_scope)})",
        )
    amount, reason = _discount(rule, in_scope)
    if amount <= 0:
        return Rejection(cid, "NO_DISCOUNT", f"{reason}: nothing to take off")
    return AppliedDiscount(cid, rule.template_id, rule.kind, amount, reason)


def _eligibility(rule: CouponRule, customer: Customer, now: datetime, order_id: str | None) -> Rejection | None:
    """Whether the coupon may be used now by this customer for this order (None = it may)."""
    cid = rule.coupon_id
    if rule.state == "used":
        return Rejection(cid, "ALREADY_USED", "the coupon has already been used")
    if rule.state == "locked" and (order_id is None or rule.locked_by != order_id):
        return Rejection(cid, "ALREADY_USED", "the coupon is held by another order")
    if rule.state == "expired":
        return Rejection(cid, "EXPIRED", "the coupon has expired")
    if rule.valid_until is not None and now >= rule.valid_until:
        return Rejection(cid, "EXPIRED", f"valid until {rule.valid_until.isoformat()}")
    if rule.valid_from is not None and now < rule.valid_from:
        return Rejection(cid, "NOT_YET_VALID", f"valid from {rule.valid_from.isoformat()}")
    if rule.kind == "member_only" and not customer.is_member:
        return Rejection(cid, "NOT_A_MEMBER", "for members only")
    if rule.kind == "new_user" and customer.paid_orders != 0:
        return Rejection(cid, "NOT_A_NEW_USER", f"for a first order only; the customer has {customer.paid_orders}")
    return None


def _in_scope(rule: CouponRule, line: Line) -> bool:
    """Whether a line counts towards the coupon's in-scope amount."""
    if rule.scope == "skus":
        return line.sku in rule.scope_skus
    if rule.scope == "sales":
        return line.sale_id is not None and line.sale_id in rule.scope_sales
    return True


def _describe_scope(rule: CouponRule) -> str:
    """The coupon's scope in words."""
    if rule.scope == "skus":
        return "skus " + ", ".join(sorted(rule.scope_skus))
    if rule.scope == "sales":
        return "sales " + ", ".join(str(s) for s in sorted(rule.scope_sales))
    return "all lines"


def _discount(rule: CouponRule, in_scope: int) -> tuple[int, str]:
    """The coupon's discount on an in-scope amount that meets its threshold, and the reason text."""
    where = f"(in-scope {money(in_scope)})"
    prefix = {"member_only": "member: ", "new_user": "new user: ", "compensation": "compensation: "}.get(rule.kind, "")
    if rule.kind == "tiered":
        tier = [t for t in rule.tiers if t.spend <= in_scope][-1]
        amount = min(tier.off, in_scope)
        return amount, f"spend {money(tier.spend)} save {money(tier.off)} {where}"
    spend = f"spend {money(rule.min_spend)} " if rule.min_spend else ""
    if rule.percent_bp > 0:
        amount = in_scope * rule.percent_bp // BP_WHOLE  # non-negative, so // rounds down
        capped = rule.cap is not None and amount > rule.cap
        if rule.cap is not None:
            amount = min(amount, rule.cap)
        limit = f", capped at {money(amount)}" if capped else ""
        return amount, f"{prefix}{spend}{percent(rule.percent_bp)} off{limit} = {money(amount)} {where}"
    amount = min(rule.amount_off, in_scope)
    if rule.kind == "no_threshold":
        return amount, f"save {money(amount)}, no threshold {where}"
    return amount, f"{prefix}{spend}save {money(amount)} {where}"


def _best_combination(
    applicable: list[AppliedDiscount], by_id: dict[str, CouponRule], subtotal: int
) -> list[AppliedDiscount]:
    """The best allowed combination, sorted by coupon_id (see `quote` for the rules and tie-breaks).

    Without enumerating subsets: the non-exclusive coupons form "slots" (a stacking group is one slot whose
    options are its coupons; an ungrouped coupon is a slot of its own). The largest reachable discount is
    V = min(sum of each slot's best option, subtotal). The fewest coupons reaching V is the smallest k whose k
    largest slot maxima sum to >= V. The lexicographically smallest sorted ids among those k-sets is built id by
    id: take the smallest id that can still be completed, i.e. its amount plus the k-j-1 largest slot maxima
    among larger ids in unused slots reaches what is left of V. That result is then compared with the best
    single exclusive coupon under the same key (discount, count, ids).
    """

    def slot(d: AppliedDiscount) -> tuple[bool, str]:
        group = by_id[d.coupon_id].stacking_group
        return (True, group) if group is not None else (False, d.coupon_id)

    def key(combo: list[AppliedDiscount]) -> tuple[int, int, tuple[str, ...]]:
        value = min(sum(d.amount for d in combo), subtotal)
        return (-value, len(combo), tuple(sorted(d.coupon_id for d in combo)))

    def top_slot_sum(options: list[AppliedDiscount], excluded: set[tuple[bool, str]], m: int) -> int | None:
        """Sum of the m largest slot maxima among options outside `excluded` (None if fewer than m slots)."""
        best: dict[tuple[bool, str], int] = {}
        for d in options:
            s = slot(d)
            if s not in excluded and d.amount > best.get(s, 0):
                best[s] = d.amount
        if len(best) < m:
            return None
        return sum(sorted(best.values(), reverse=True)[:m])

    stackable = sorted((d for d in applicable if not by_id[d.coupon_id].exclusive), key=lambda d: d.coupon_id)
    stack: list[AppliedDiscount] = []
    slot_best: dict[tuple[bool, str], int] = {}
    for d in stackable:
        slot_best[slot(d)] = max(slot_best.get(slot(d), 0), d.amount)
    target = min(sum(slot_best.values()), subtotal)
    if target > 0:
        ranked = sorted(slot_best.values(), reverse=True)
        count = next(k for k in range(1, len(ranked) + 1) if sum(ranked[:k]) >= target)
        used: set[tuple[bool, str]] = set()
        start = 0
        for step in range(count):
            still_needed = target - sum(d.amount for d in stack)
            for i in range(start, len(stackable)):
                d = stackable[i]
                if slot(d) in used:
                    continue
                rest = top_slot_sum(stackable[i + 1 :], used | {slot(d)}, count - step - 1)
                if rest is not None and d.amount + rest >= still_needed:
                    stack.append(d)
                    used.add(slot(d))
                    start = i + 1
                    break
            else:  # pragma: no cover - the k largest maxima always complete the set
                raise AssertionError("best combination: no completion found")

    best = stack
    for d in applicable:
        if by_id[d.coupon_id].exclusive and key([d]) < key(best):
            best = [d]
    return sorted(best, key=lambda d: d.coupon_id)

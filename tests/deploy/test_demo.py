"""The demo's own judgement (warehouse settlement, coupons) and how it hands its crowd's answers to the checker."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from deploy import cli
from deploy.demo import coupons, crowd, settle, summary
from loadtest import checker, seed
from loadtest.outcomes import PURCHASE, Journey, Outcomes


class _FakeInventory:
    """An inventory admin API in memory, as flashsale's settlement left it: one SKU, one allocation."""

    def __init__(self, *, sold: int, returned: int, recon_ok: bool = True) -> None:
        self.calls: list[tuple[str, str]] = []
        self.recon_ok = recon_ok
        self.allocation = {"allocated": 200, "sold": sold, "returned": returned}
        self.sku = {"on_hand": 1000, "available": 800 + returned, "allocated": 200 - sold - returned, "held": 0}
        self.sku["sold"] = sold

    def get(self, service: str, path: str, params: dict[str, Any] | None = None) -> Any:
        self.calls.append((service, path))
        if path.endswith("/admin/reconciliation"):
            drift = [] if self.recon_ok else ["DEMO-x: available is 1, the ledger says 2"]
            return {"ok": self.recon_ok, "skus": [{"sku": "DEMO-x"}], "drift": drift}
        if "/admin/allocations/" in path:
            a = self.allocation
            return {**a, "outstanding": a["allocated"] - a["sold"] - a["returned"]}
        return self.sku


def _inventory_demo(fake: _FakeInventory, sold: int) -> tuple[list[str], list[str]]:
    stock = summary.DemoStock(sku="DEMO-x", sale_id=7, allocated=200)
    return summary.inventory_summary(fake, stock=stock, sold=sold)  # type: ignore[arg-type]


def test_demo_checks_the_settled_allocation_and_the_warehouse_counters() -> None:
    fake = _FakeInventory(sold=130, returned=70)
    lines, problems = _inventory_demo(fake, sold=130)
    assert problems == []
    assert ("inventory", "/admin/allocations/7/DEMO-x") in fake.calls
    assert any("reconciliation    ok" in line for line in lines)
    assert any("sold 130, returned 70" in line for line in lines)


def test_demo_fails_when_the_sale_was_not_settled_with_the_warehouse() -> None:
    _lines, problems = _inventory_demo(_FakeInventory(sold=130, returned=0), sold=130)  # unsold units not back
    assert any("settled as (sold, returned, outstanding) (130, 0, 70)" in p for p in problems)
    assert any("inventory counters" in p for p in problems)


def test_demo_fails_when_the_inventory_reconciliation_is_not_ok() -> None:
    lines, problems = _inventory_demo(_FakeInventory(sold=200, returned=0, recon_ok=False), sold=200)
    assert any("reconciliation is not ok" in p for p in problems)
    assert any("NOT ok" in line for line in lines)


def _seed_plan(**changes: Any) -> seed.SaleSeed:
    plan = {"quantity": 200, "limit": 2, "start_in": 3, "duration_minutes": 15, "users": 10, "coupons": 250}
    return seed.SaleSeed(**{**plan, **changes})


def test_demo_coupon_template_is_valid_tiered_and_scoped_to_the_demo_sale() -> None:
    from services.coupon.rules import validate_rule
    from services.coupon.schemas import TemplateCreate
    from services.coupon.service import rule_of

    body = seed.coupon_template_body(42, _seed_plan(coupon_tiers=coupons.DEMO_COUPON_TIERS), "t")
    template = TemplateCreate.model_validate(body)  # what POST /admin/templates accepts
    assert validate_rule(rule_of(template)) == []
    assert (template.kind, template.scope, template.scope_sales, template.total_quantity, template.per_user_limit) == (
        "tiered",
        "sales",
        [42],
        250,
        1,
    )
    # One demo unit earns the first tier, two units the second; less earns nothing.
    price = coupons.DEMO_PRICE
    assert coupons.tier_discount(price - 1) == 0
    assert 0 < coupons.tier_discount(price) < coupons.tier_discount(2 * price) < price


def test_the_load_test_keeps_its_fixed_three_dollar_coupon() -> None:
    from services.coupon.schemas import TemplateCreate

    template = TemplateCreate.model_validate(seed.coupon_template_body(42, _seed_plan(coupons=40), "t"))
    assert (template.kind, template.amount_off, template.total_quantity) == ("fixed_off", 300, 40)


def test_the_demo_crowd_takes_its_size_coupon_and_pay_shares_from_the_command_line() -> None:
    demo = cli.parse_args(["demo"])
    assert (demo.users, demo.coupon_users, demo.coupons, demo.pay_share) == (1000, 300, 250, 0.7)
    assert cli.parse_args(["demo", "--coupon-users", "0"]).coupon_users == 0
    plan = crowd.CrowdPlan(users=demo.users, spawn_rate=demo.spawn_rate, coupon_share=0.3, pay_share=0.7, seconds=90)
    shape = plan.shape()
    assert shape["LOADTEST_SHAPE"] == "journeys", "each shopper walks the chain once; the run ends when all have"
    assert (shape["LOADTEST_USERS"], shape["LOADTEST_COUPON_SHARE"], shape["LOADTEST_PAY_SHARE"]) == (
        "1000",
        "0.3",
        "0.7",
    )


def test_what_the_crowds_shoppers_logged_is_what_the_demo_and_the_checker_read(tmp_path: Path) -> None:
    bought = {"started_at": 1.0, "purchase_at": 2.0, "purchase_code": "202", "answered_at": 2.5, "order_code": "200"}
    paid = Journey(
        user_id="lt-a-000000", claim_key="k0", claim_code="201", claimed_at=1.5, coupon_id="c9", reservation_id="r-1",
        quantity=1, order_id="o-1", ordered_at=3.0, pays=True, pay_code="200", payment_provider="backup", paid_at=4.0,
        pricing_waits=2, **bought,
    )  # fmt: skip
    unpaid = Journey(user_id="lt-a-000001", reservation_id="r-2", quantity=2, order_id="o-2", ordered_at=3.0, **bought)
    refused = Journey(user_id="lt-a-000002", started_at=1.0, purchase_at=2.0, purchase_code="SOLD_OUT", answered_at=2.1)
    log = Outcomes(tmp_path)  # what the locustfile's shoppers write as they shop
    for journey in (paid, unpaid):
        log.count(PURCHASE, "202")
        log.accept(
            {"reservation_id": journey.reservation_id, "quantity": journey.quantity, "sale_id": 7}, journey.user_id
        )
    log.count(PURCHASE, "SOLD_OUT")
    for journey in (paid, unpaid, refused):
        log.walked(journey)
    log.write()

    run = crowd.read_crowd(tmp_path, 7, {"id": 3, "total_quantity": 5}, locust_exit=0)
    burst, orders = run.burst, run.orders
    acknowledged = checker.read_acknowledged(tmp_path / "accepted.jsonl", {7})[7]
    assert burst.reservations == acknowledged == {"r-1": ("lt-a-000000", 1), "r-2": ("lt-a-000001", 2)}
    assert (burst.requests, burst.accepted, burst.units, dict(burst.rejections)) == (3, 2, 3, {"SOLD_OUT": 1})
    assert burst.coupon_of == {"r-1": "c9"}
    assert set(orders.orders) == {"r-1", "r-2"} and orders.paid == {"o-1": "backup"}
    assert [j.order_id for j in orders.unpaid] == ["o-2"] and orders.pricing_waits == 2
    assert run.claims is not None and run.claims.coupons == {"lt-a-000000": "c9"} and run.claims.claimers == 1


class _FakeCoupons:
    """The coupon template's stats as the coupon admin API answers them."""

    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats

    def get(self, service: str, path: str, params: dict[str, Any] | None = None) -> Any:
        assert (service, path) == ("coupon", "/admin/templates/1/stats")
        return {"total_quantity": 2, "claimed": 2, "in_wallets": 2, **self.stats}


def _coupon_outcome(stats: dict[str, int], wallet: list[str]) -> tuple[list[str], list[str]]:
    """coupon_summary over a paid and an expired order that used coupons c1 / c2, against a fake coupon service."""

    def order(rid: str, state: str, coupon: str) -> dict[str, object]:
        discount = coupons.tier_discount(coupons.DEMO_PRICE)
        applied = {"coupon_id": coupon, "amount": discount}
        return {
            "id": f"o-{rid}",
            "reservation_id": rid,
            "state": state,
            "subtotal": coupons.DEMO_PRICE,
            "discount": discount,
            "total": coupons.DEMO_PRICE - discount,
            "coupons": {"discounts": [applied], "rejections": []},
        }

    claims = crowd.Claims(template={"id": 1, "total_quantity": 2}, claimers=2, coupons={"u0": "c1", "u1": "c2"})
    claims.replayed_same = 2
    claims.second["CLAIM_LIMIT_REACHED"] = 2
    burst = crowd.BurstResult(reservations={"r1": ("u0", 1), "r2": ("u1", 1)}, coupon_of={"r1": "c1", "r2": "c2"})
    paid, expired = order("r1", "paid", "c1"), order("r2", "expired", "c2")
    gmv = coupons.DEMO_PRICE - coupons.tier_discount(coupons.DEMO_PRICE)
    settled = settle.Settled(
        {"gmv": gmv}, {}, 1, {"expired": 1}, 1, 20, 0, False, {"paid": [paid], "expired": [expired]}
    )
    admin = _FakeCoupons(stats)
    return coupons.coupon_summary(
        admin,  # type: ignore[arg-type]
        lambda _user: set(wallet),
        claims=claims,
        burst=burst,
        settled=settled,
    )


def test_demo_checks_used_coupons_against_paid_orders_and_freed_ones_in_wallets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(coupons, "COUPON_SETTLE_SECONDS", 0)
    monkeypatch.setattr(coupons.time, "sleep", lambda _s: None)
    discount = coupons.tier_discount(coupons.DEMO_PRICE)
    good = {"locked": 0, "used": 1, "discount_given": discount}
    lines, problems = _coupon_outcome(good, ["c2"])
    assert problems == [] and any("1 of 1 coupons of unpaid orders" in line for line in lines)
    _lines, problems = _coupon_outcome({**good, "locked": 1, "used": 0, "discount_given": 0}, [])
    assert any("still locked" in p for p in problems)
    assert any("0 coupons used; 1 paid orders carry one" in p for p in problems)
    assert any("only 0 of the 1 coupons of unpaid orders" in p for p in problems)


def test_demo_reads_where_the_orders_ended_up_from_the_checkers_facts() -> None:
    def order(state: str, units: int) -> dict[str, Any]:
        return {"id": f"o-{state}-{units}", "reservation_id": "r", "state": state, "lines": [{"quantity": units}]}

    orders = [order("paid", 2), order("paid", 1), order("expired", 1), order("cancelled", 2)]
    facts = checker.SaleFacts(
        sale={}, stats={"sold": 3, "released": 3, "reserved": 0, "remaining": 4}, reconciliation={},
        reservations={}, orders=orders, stream={}, stream_entries=0, bought={},
    )  # fmt: skip
    wait = settle.Wait(deadline_seconds=20, waited=5.0, timed_out=False, sale_stats=facts.stats)
    settled = settle.settled_from(facts, {"by_state": {"paid": 2, "expired": 1, "cancelled": 1}}, wait)
    assert (settled.paid_units, settled.closed_units, settled.closed) == (3, 3, {"expired": 1, "cancelled": 1})
    assert not settled.timed_out
    behind = dataclasses.replace(wait, sale_stats={**facts.stats, "sold": 2})
    assert settle.settled_from(facts, {"by_state": {}}, behind).timed_out, "flashsale sold 2 of the 3 paid units"

"""The demo flash sale, stage by stage: seed, claims, the crowd, the orders, the end of the sale, the checker."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from deploy import state as stack_state
from deploy.backends import Backends
from deploy.demo.coupons import DEMO_COUPON_TIERS, coupon_summary
from deploy.demo.crowd import Burst, BurstResult, Checkout, Claiming, Claims, OrdersResult, Shoppers, spread
from deploy.demo.settle import Wait, settled_from, wait_for_orders, wait_settled_with_the_warehouse
from deploy.demo.summary import (
    DEMO_LOW_STOCK,
    DEMO_STOCK,
    DemoStock,
    StreamCount,
    balance_line,
    burst_lines,
    burst_problems,
    inventory_summary,
    orders_lines,
    orders_problems,
)
from deploy.errors import StackError
from deploy.state import say
from deploy.topology import HOST, port_offset, replica_port, spec_named
from loadtest import checker, seed, targets

RESULTS = stack_state.ROOT / "loadtest" / "results"
CHECKER_WAIT = 30.0  # seconds the checker may wait for in-flight orders after the sale ended


def stream_count(redis_url: str, sale_id: int) -> StreamCount:
    """Purchase events ever added to the sale's stream (acknowledged ones are trimmed) and its reservations."""
    client = Redis.from_url(redis_url, socket_timeout=5)
    try:
        info: dict[str, Any] = client.xinfo_stream(f"{{fs:{sale_id}}}:events")
        events = int(info.get("entries-added", info.get("length", 0)))
        return StreamCount(events=events, reservations=int(client.hlen(f"{{fs:{sale_id}}}:res")))
    finally:
        client.close()


class DemoSale:
    """One demo sale through the gateway, the way a storefront and an ops console call it."""

    def __init__(self, args: argparse.Namespace, backends: Backends) -> None:
        self.args = args
        self.backends = backends
        gateway = targets.gateway_url(port_offset())
        self.targets = targets.gateway_targets(gateway)
        self.admin = checker.Admin(self.targets, checker.admin_token())
        self.run_dir = RESULTS / f"demo-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
        say(f"the demo talks to the gateway only: {gateway}/api/<service>/...")

    def post(self, service: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """An admin POST; a refusal stops the demo."""
        resp = self.admin.client.post(self.targets.url(service, path), **kwargs)
        if resp.status_code >= 300:
            raise StackError(f"POST {path} answered {resp.status_code}: {resp.text}")
        body: dict[str, Any] = resp.json()
        return body

    def seed(self) -> dict[str, Any]:
        """The SKU, the sale allocated from it and its coupon template, through loadtest/seed.py."""
        args = self.args
        plan = seed.SaleSeed(
            quantity=args.quantity,
            limit=args.limit,
            start_in=args.start_in,
            duration_minutes=15,
            users=args.users,
            coupons=args.coupons if args.coupon_users else 0,
            stock=DEMO_STOCK,
            low_stock=DEMO_LOW_STOCK,
            coupon_tiers=DEMO_COUPON_TIERS,
            title="Demo flash sale",
            sku_prefix="DEMO",
        )
        try:
            run = seed.seed_sale(self.targets, self.run_dir, plan, redis_url=self.backends.redis_url)
        except (seed.SeedError, httpx.HTTPError) as exc:
            raise StackError(f"seeding the demo sale failed: {exc}") from exc
        say(
            f"inventory SKU {run['sku']}: {DEMO_STOCK:,} units in the warehouse (low-stock alert at {DEMO_LOW_STOCK:,})"
        )
        say(
            f"demo sale {run['sale_id']}: {args.quantity} units at {seed.money(seed.PRICE)}, limit {args.limit} "
            f"per user, scheduled to start at {datetime.fromisoformat(run['starts_at']).isoformat(timespec='seconds')}"
        )
        return run

    def allocation(self, run: dict[str, Any]) -> DemoStock:
        """The units the sale took from the warehouse."""
        allocation = self.admin.get("inventory", f"/admin/allocations/{run['sale_id']}/{run['sku']}")
        stock = DemoStock(sku=str(run["sku"]), sale_id=int(run["sale_id"]), allocated=int(allocation["allocated"]))
        say(f"the sale took {stock.allocated:,} units of {stock.sku} from the warehouse (an allocation)")
        return stock

    def claims(self, run: dict[str, Any], shoppers: Shoppers) -> Claims | None:
        """Some buyers claim the sale's coupon; a holder's quotes of one and two units."""
        template = run["coupon_template"]
        if not template:
            return None
        claimers = spread(len(shoppers.tokens), self.args.coupon_users)
        claims = asyncio.run(Claiming(self.targets.bases["coupon"], Claims(template=template), shoppers).run(claimers))
        if claims.coupons:
            self.quote(run, shoppers, claims)
        refused = ", ".join(f"{code} {n:,}" for code, n in claims.refused.most_common()) or "none"
        say(
            f"coupon template {template['id']} ({template['name']}, sale {run['sale_id']} only): "
            f"{len(claims.coupons):,} of {template['total_quantity']:,} claimed by {claims.claimers:,} buyers "
            f"in {claims.elapsed:.2f}s (refused: {refused})"
        )
        for units, quote in claims.quotes:
            reasons = "; ".join(d["reason"] for d in quote["discounts"]) or "no coupon applies"
            say(
                f"  quote, {units} unit{'s' if units > 1 else ''}: {seed.money(quote['subtotal'])} - "
                f"{seed.money(quote['discount'])} = {seed.money(quote['total'])} ({reasons})"
            )
        return claims

    def quote(self, run: dict[str, Any], shoppers: Shoppers, claims: Claims) -> None:
        """A holder's best price of one and of two units with the coupons of the wallet (`coupon_ids: null`)."""
        buyer = min(claims.coupons)
        for units in (1, 2):
            line = {"sku": run["sku"], "sale_id": int(run["sale_id"]), "unit_price": seed.PRICE, "quantity": units}
            resp = httpx.post(
                self.targets.url("coupon", "/quote"),
                json={"lines": [line], "coupon_ids": None},
                headers=shoppers.auth(buyer),
                timeout=10.0,
            )
            if resp.status_code != 200:
                raise StackError(f"POST /quote answered {resp.status_code}: {resp.text}")
            claims.quotes.append((units, resp.json()))

    def wait_live(self, sale_id: int) -> None:
        """Until the scheduled sale is live."""
        deadline = time.monotonic() + self.args.start_in + 30
        while True:
            resp = httpx.get(self.targets.url("flashsale", f"/sales/{sale_id}"), timeout=10.0)
            if resp.status_code == 200 and resp.json()["state"] == "live":
                return
            if time.monotonic() > deadline:
                raise StackError(f"sale {sale_id} did not go live: {resp.status_code} {resp.text}")
            time.sleep(0.1)

    def burst(self, sale_id: int, shoppers: Shoppers, claims: Claims | None) -> BurstResult:
        """The crowd buys; every 202 goes to the run's accepted.jsonl."""
        holders = claims.coupons if claims else {}
        say(
            f"sale {sale_id} is live; {len(shoppers.tokens):,} buyers x up to {self.args.attempts} attempts through "
            "the gateway"
            + (f"; the {len(holders):,} coupon holders name their coupon in their purchase" if holders else "")
        )
        crowd = Burst(sale_id=sale_id, shoppers=shoppers, coupons=holders, log=self.run_dir / "accepted.jsonl")
        bases = self.targets.bases["flashsale"]
        return asyncio.run(crowd.run(bases, attempts=self.args.attempts, concurrency=self.args.concurrency))

    def checkout(self, shoppers: Shoppers, burst: BurstResult) -> OrdersResult:
        """The buyers fetch their orders and pay a share; with --fail-primary, through the backup provider."""
        say(
            f"{burst.accepted:,} reservations; the buyers fetch their orders (long-poll) over "
            f"the gateway and pay {self.args.pay_share:.0%} of them"
        )
        primary = f"http://{HOST}:{replica_port(spec_named('order').links['ORDER_PAYSIM_PRIMARY_URL'], port_offset())}"
        if self.args.fail_primary:
            resp = self.admin.client.put(f"{primary}/admin/faults", json={"down": True})
            if resp.status_code >= 300:
                raise StackError(f"PUT /admin/faults on the primary payment provider answered {resp.status_code}")
            say(f"payment provider primary ({primary}) is down (fault injection); payments fail over to backup")
        try:
            checkout = Checkout(self.targets.bases["order"], shoppers, burst.reservations)
            return asyncio.run(checkout.run(self.args.pay_share))
        finally:
            if self.args.fail_primary:
                self.admin.client.delete(f"{primary}/admin/faults")  # a healthy provider again

    def end(self, sale_id: int, orders: OrdersResult) -> tuple[Wait, dict[str, Any]]:
        """Wait for the orders to settle, stop the sale, and wait until flashsale settled it with the warehouse."""
        wait = wait_for_orders(self.admin, sale_id, orders)
        self.post("flashsale", f"/admin/sales/{sale_id}/stop")
        return wait, wait_settled_with_the_warehouse(self.admin, sale_id)

    def check(self, sale_id: int) -> tuple[list[checker.Finding], checker.SaleFacts]:
        """loadtest/checker.py over the sale and the 202s the crowd logged; its findings saved beside run.json."""
        acknowledged = checker.read_acknowledged(self.run_dir / "accepted.jsonl", {sale_id})
        redis = Redis.from_url(self.backends.redis_url, socket_timeout=10)
        try:
            findings, facts = checker.check_sales(self.admin, redis, [sale_id], acknowledged, CHECKER_WAIT)
        except checker.CheckError as exc:
            raise StackError(f"the checker could not check sale {sale_id}: {exc}") from exc
        finally:
            redis.close()
        ok = all(f.ok for f in findings)
        report = {"ok": ok, "findings": [asdict(f) for f in findings]}
        (self.run_dir / "checker.json").write_text(json.dumps(report, indent=2) + "\n")
        return findings, facts[sale_id]

    def wallet(self, shoppers: Shoppers) -> Callable[[int], set[str]]:
        """The coupons available in a buyer's wallet, by buyer."""

        def available(buyer: int) -> set[str]:
            url = self.targets.url("coupon", "/wallet")
            resp = httpx.get(url, params={"state": "available"}, headers=shoppers.auth(buyer), timeout=10.0)
            if resp.status_code != 200:
                raise StackError(f"GET /wallet answered {resp.status_code}: {resp.text}")
            return {str(c["coupon_id"]) for c in resp.json()}

        return available


def run_demo_sale(args: argparse.Namespace, backends: Backends) -> bool:
    """Seed a sale, claim coupons, fire the crowd, pay some orders, end the sale, run the checker; print it all."""
    demo = DemoSale(args, backends)
    try:
        return _run(demo, args)
    finally:
        demo.admin.close()


def _run(demo: DemoSale, args: argparse.Namespace) -> bool:
    run = demo.seed()
    sale_id = int(run["sale_id"])
    stock = demo.allocation(run)
    pairs = seed.read_tokens(Path(run["tokens_file"]))
    shoppers = Shoppers(users=[user for user, _t in pairs], tokens=[token for _u, token in pairs])
    claims = demo.claims(run, shoppers)
    demo.wait_live(sale_id)
    burst = demo.burst(sale_id, shoppers, claims)
    stats = demo.admin.get("flashsale", f"/admin/sales/{sale_id}/stats")
    stream = stream_count(demo.backends.redis_url, sale_id)
    orders = demo.checkout(shoppers, burst)
    wait, ended = demo.end(sale_id, orders)
    findings, facts = demo.check(sale_id)
    order_stats = demo.admin.get("order", "/admin/orders/stats", {"sale_id": sale_id})
    settled = settled_from(facts, order_stats, wait)
    lines = burst_lines(sale_id, args.quantity, burst, stats, stream)
    problems = burst_problems(burst, stats, stream)
    lines += orders_lines(burst, orders, settled, args.fail_primary)
    problems += orders_problems(args.quantity, burst, orders, settled)
    if claims:
        coupon_lines, coupon_problems = coupon_summary(
            demo.admin, demo.wallet(shoppers), claims=claims, burst=burst, settled=settled
        )
        lines += coupon_lines
        problems += coupon_problems
    inventory_lines, inventory_problems = inventory_summary(demo.admin, stock=stock, sold=settled.paid_units)
    lines += [*inventory_lines, balance_line(facts.reconciliation)]
    problems += inventory_problems
    if not ended.get("settled_at"):
        problems.append("the ended sale was not settled with the warehouse within 30 s")
    _print_summary(demo, sale_id, lines, findings, problems)
    return not problems and all(f.ok for f in findings)


def _print_summary(
    demo: DemoSale, sale_id: int, lines: list[str], findings: list[checker.Finding], problems: list[str]
) -> None:
    say("")
    say(f"summary of demo sale {sale_id}")
    for line in lines:
        say(line)
    say(f"the checker over sale {sale_id} (loadtest/checker.py, as after every drill):")
    for finding in findings:
        say(f"  {checker.finding_line(finding)}")
    say(checker.verdict(findings, 1))
    for problem in problems:
        say(f"  FAILED: {problem}")
    run_dir = stack_state.rel(demo.run_dir)
    say(f"run files (run.json, tokens, accepted.jsonl, checker.json): {run_dir}/")

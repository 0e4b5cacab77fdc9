"""The demo flash sale, stage by stage: seed, the crowd (the load test's shoppers), the claims and orders they
left, the end of the sale, the checker."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from deploy import state as stack_state
from deploy.backends import Backends
from deploy.demo.coupons import DEMO_COUPON_TIERS, coupon_summary
from deploy.demo.crowd import Claims, CrowdPlan, CrowdRun, OrdersResult, run_crowd
from deploy.demo.probes import Shoppers, cancel_if_too_long, quote_a_holder, replay_claims
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
CROWD_SECONDS = 120.0  # the most the crowd may take, from Locust's start to the last shopper's journey


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

    def crowd(self, run: dict[str, Any]) -> CrowdRun:
        """The load test's shoppers walk the chain once each; with --fail-primary, paying through the backup."""
        args = self.args
        share = min(1.0, args.coupon_users / max(1, args.users)) if run["coupon_template"] else 0.0
        plan = CrowdPlan(args.users, args.spawn_rate, share, args.pay_share, CROWD_SECONDS)
        say(
            f"{args.users:,} shoppers (loadtest/locustfile.py, the drills' crowd, in the journeys shape) come at "
            f"{args.spawn_rate:g}/s and walk the chain once through the gateway: the countdown, "
            + (f"a coupon claim ({share:.0%} of them), " if share else "")
            + f"one purchase, the order (long poll), the payment ({args.pay_share:.0%} of them)"
        )
        primary = f"http://{HOST}:{replica_port(spec_named('order').links['ORDER_PAYSIM_PRIMARY_URL'], port_offset())}"
        if args.fail_primary:
            resp = self.admin.client.put(f"{primary}/admin/faults", json={"down": True})
            if resp.status_code >= 300:
                raise StackError(f"PUT /admin/faults on the primary payment provider answered {resp.status_code}")
            say(f"payment provider primary ({primary}) is down (fault injection); payments fail over to backup")
        try:
            crowd = run_crowd(self.run_dir, self.targets, plan, run)
        finally:
            if args.fail_primary:
                self.admin.client.delete(f"{primary}/admin/faults")  # a healthy provider again
        stats = crowd.locust_stats
        say(
            f"the crowd is done: {len(crowd.journeys):,} journeys, {crowd.burst.accepted:,} purchases accepted; "
            f"Locust counted {stats.get('Request Count', '?')} requests, {stats.get('Failure Count', '?')} failed, "
            f"p50 {stats.get('50%', '?')} ms, p95 {stats.get('95%', '?')} ms (exit {crowd.locust_exit})"
        )
        return crowd

    def claims(self, run: dict[str, Any], crowd: CrowdRun, shoppers: Shoppers) -> Claims | None:
        """The claims the crowd made, each holder's claim repeated and a second one tried; a holder's quotes."""
        claims = crowd.claims
        if claims is None:
            return None
        replay_claims(shoppers, claims)
        quote_a_holder(shoppers, run, claims, crowd.burst)
        template = claims.template
        refused = ", ".join(f"{code} {n:,}" for code, n in claims.refused.most_common()) or "none"
        say(
            f"coupon template {template['id']} ({template['name']}, sale {run['sale_id']} only): "
            f"{len(claims.coupons):,} of {template['total_quantity']:,} claimed by {claims.claimers:,} shoppers "
            f"in {claims.elapsed:.2f}s (refused: {refused})"
        )
        for units, quote in claims.quotes:
            reasons = "; ".join(d["reason"] for d in quote["discounts"]) or "no coupon applies"
            say(
                f"  quote, {units} unit{'s' if units > 1 else ''}: {seed.money(quote['subtotal'])} - "
                f"{seed.money(quote['discount'])} = {seed.money(quote['total'])} ({reasons})"
            )
        return claims

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
        checker.write_findings(self.run_dir / "checker.json", findings)
        return findings, facts[sale_id]


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
    crowd = demo.crowd(run)
    burst, orders = crowd.burst, crowd.orders
    stats = demo.admin.get("flashsale", f"/admin/sales/{sale_id}/stats")
    stream = stream_count(demo.backends.redis_url, sale_id)
    shoppers = Shoppers(demo.targets, Path(run["tokens_file"]))
    try:
        claims = demo.claims(run, crowd, shoppers)
        cancel_if_too_long(shoppers, orders)
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
                demo.admin, shoppers.wallet, claims=claims, burst=burst, settled=settled
            )
            lines += coupon_lines
            problems += coupon_problems
    finally:
        shoppers.close()
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
    say(
        f"run files (run.json, tokens, accepted.jsonl, journeys.jsonl, outcomes.json, Locust's CSVs and "
        f"locust.html, checker.json): {run_dir}/"
    )

"""The checker: after any run, was anything oversold, lost or duplicated? Exits 1 on any violation and says which.

    .venv/bin/python -m loadtest.checker --sale 12 [--sale 13 ...]
    .venv/bin/python -m loadtest.checker --run loadtest/results/<run>   # the sales of a run (run.json)
    .venv/bin/python -m loadtest.checker --all                           # every sale flashsale knows

Invariants, per sale:
- not oversold: paid + pending (orders awaiting payment, and accepted purchases whose order is not created yet)
  <= quantity, and Redis's reserved + sold <= quantity;
- per-user limits held: no user holds (pending or paid) more units than the sale's limit, in the order record
  or in Redis's per-user counts;
- every accepted purchase has exactly one order: each reservation in the purchase stream (and each 202 the load
  test's clients logged) has an order, after waiting for the order consumers to catch up;
- no duplicate orders: no two orders for one reservation, and no order for a purchase that was never accepted;
- stock balances: remaining + pending + paid + returned = quantity (flashsale's reconciliation report and the
  checker's own sum over the order record);
- no coupon used twice: no coupon is held by two live orders (pending, paid or fulfilled), and each coupon
  template's `used` counter covers its paid orders.

What it reads: flashsale `GET /admin/sales/{id}`, `/stats`, `/reconciliation`; order `GET /admin/sales/{id}/
reservations` and `GET /admin/orders?sale_id=` (every order, every state); coupon `GET /admin/templates/{id}/
stats`; Redis (read only): the purchase stream `{fs:<id>}:events` (one entry per accepted purchase), the
per-user counts `{fs:<id>}:bought` and the order consumers' dead letters `{fs:<id>}:events:dead`; and, with
`--run`, the clients' log of 202 answers (accepted.jsonl).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis import Redis
from redis.exceptions import RedisError

from loadtest.targets import Targets, resolve, stack_redis_url
from services.common.contracts import dead_letter_stream, purchase_stream
from services.flashsale.store import bought_key

HOLDING_STATES = ("pending_payment", "paid", "fulfilled")  # an order in these holds its coupons
PAID_STATES = ("paid", "fulfilled")
PAGE = 500


class CheckError(Exception):
    """The checker could not read what it needs (a service or Redis did not answer)."""


@dataclass(slots=True)
class Finding:
    """One invariant of one sale: held or violated, and why."""

    sale_id: int
    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class SaleFacts:
    """Everything the checker read about one sale."""

    sale: dict[str, Any]
    stats: dict[str, Any]
    reconciliation: dict[str, Any]
    reservations: dict[str, Any]  # order's view: reservation -> stock state
    orders: list[dict[str, Any]]
    stream: dict[str, tuple[str, int]]  # accepted purchases: reservation id -> (user id, units)
    stream_entries: int
    bought: dict[str, int]  # Redis per-user counts
    acknowledged: dict[str, tuple[str, int]] = field(default_factory=dict)  # 202s the clients logged
    templates: dict[int, dict[str, Any]] = field(default_factory=dict)  # coupon template id -> stats
    dead_letters: int = 0  # purchase events the order consumers gave up on (`<stream>:dead`)


class Admin:
    """Admin API calls over the targets; in direct mode a replica that does not answer is skipped."""

    def __init__(self, targets: Targets, token: str, timeout: float = 20.0) -> None:
        self.targets = targets
        self.client = httpx.Client(timeout=timeout, headers={"authorization": f"Bearer {token}"})

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def get(self, service: str, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET an admin path; raises CheckError when no replica answers 200."""
        problem = ""
        for replica in range(self.targets.replicas(service)):
            url = self.targets.url(service, path, replica)
            try:
                resp = self.client.get(url, params=params)
            except httpx.HTTPError as exc:
                problem = f"{url}: {type(exc).__name__}"
                continue
            if resp.status_code == 200:
                return resp.json()
            problem = f"{url} answered {resp.status_code}: {resp.text[:300]}"
            if resp.status_code < 500:
                break
        raise CheckError(problem)


def read_stream(redis: Redis, sale_id: int) -> tuple[dict[str, tuple[str, int]], int]:
    """Accepted purchases from the sale's purchase stream: reservation id -> (user, units), and the entry count."""
    accepted: dict[str, tuple[str, int]] = {}
    key = purchase_stream(sale_id)
    start, entries = "-", 0
    while True:
        batch: list[tuple[bytes, dict[bytes, bytes]]] = redis.xrange(key, min=start, count=5000)  # type: ignore[assignment]
        for _entry_id, fields in batch:
            entries += 1
            data = orjson.loads(fields.get(b"data", b"{}"))
            accepted[str(data["reservation_id"])] = (str(data["user_id"]), int(data["quantity"]))
        if len(batch) < 5000:
            return accepted, entries
        start = "(" + batch[-1][0].decode()


def read_acknowledged(path: Path, sale_ids: set[int]) -> dict[int, dict[str, tuple[str, int]]]:
    """The 202 answers the load test's clients logged (accepted.jsonl), by sale."""
    out: dict[int, dict[str, tuple[str, int]]] = defaultdict(dict)
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if int(rec["sale_id"]) in sale_ids:
            out[int(rec["sale_id"])][str(rec["reservation_id"])] = (str(rec["user_id"]), int(rec["quantity"]))
    return out


def all_orders(admin: Admin, sale_id: int) -> list[dict[str, Any]]:
    """Every order of the sale, in every state (pages of 500, de-duplicated by id: pages may shift)."""
    seen: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page: list[dict[str, Any]] = admin.get(
            "order", "/admin/orders", {"sale_id": sale_id, "limit": PAGE, "offset": offset}
        )
        for order in page:
            seen[str(order["id"])] = order
        if len(page) < PAGE:
            return list(seen.values())
        offset += PAGE


def collect(admin: Admin, redis: Redis, sale_id: int, acknowledged: dict[str, tuple[str, int]]) -> SaleFacts:
    """Read one sale's facts from the admin APIs and Redis."""
    sale = admin.get("flashsale", f"/admin/sales/{sale_id}")
    stats = admin.get("flashsale", f"/admin/sales/{sale_id}/stats")
    reconciliation = admin.get("flashsale", f"/admin/sales/{sale_id}/reconciliation")
    reservations = admin.get("order", f"/admin/sales/{sale_id}/reservations")
    orders = all_orders(admin, sale_id)
    try:
        stream, entries = read_stream(redis, sale_id)
        raw: dict[bytes, bytes] = redis.hgetall(bought_key(sale_id))  # type: ignore[assignment]
        dead = int(redis.xlen(dead_letter_stream(purchase_stream(sale_id))))
    except RedisError as exc:
        raise CheckError(f"Redis: {exc}") from exc
    bought = {k.decode(): int(v) for k, v in raw.items()}
    template_ids = {int(d["template_id"]) for o in orders for d in _discounts(o)}
    templates = {tid: admin.get("coupon", f"/admin/templates/{tid}/stats") for tid in sorted(template_ids)}
    return SaleFacts(
        sale, stats, reconciliation, reservations, orders, stream, entries, bought, acknowledged, templates, dead
    )


def _discounts(order: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (order.get("coupons") or {}).get("discounts", [])
    return found


def _sample(items: Iterable[str], n: int = 5) -> str:
    items = sorted(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def evaluate(facts: SaleFacts) -> list[Finding]:
    """Every invariant of one sale, held or not."""
    sale_id = int(facts.sale["id"])
    quantity = int(facts.sale["quantity"])
    limit = int(facts.sale["per_user_limit"])
    out: list[Finding] = []

    def finding(name: str, ok: bool, detail: str) -> None:
        out.append(Finding(sale_id, name, ok, detail))

    record = {str(r["reservation_id"]): r for r in facts.reservations["reservations"]}
    by_rid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for order in facts.orders:
        by_rid[str(order["reservation_id"])].append(order)
    accepted = {**facts.stream, **facts.acknowledged}
    in_flight = {rid: v for rid, v in accepted.items() if rid not in by_rid}  # accepted, no order yet (or lost)
    pending = int(facts.reservations["reserved_units"])
    paid = int(facts.reservations["sold_units"])
    in_flight_units = sum(units for _user, units in in_flight.values())

    # Not oversold.
    redis_taken = int(facts.stats["reserved"]) + int(facts.stats["sold"])
    taken = paid + pending + in_flight_units
    finding(
        "not_oversold",
        taken <= quantity and redis_taken <= quantity,
        f"paid {paid} + pending {pending} + accepted without order {in_flight_units} = {taken} <= quantity {quantity};"
        f" Redis reserved + sold = {redis_taken}",
    )

    # Per-user limits.
    held: Counter[str] = Counter()
    for rid, r in record.items():
        if r["stock"] in ("reserved", "sold") and rid:
            held[str(r["user_id"])] += int(r["quantity"])
    for user, units in in_flight.values():
        held[user] += units
    over = {u: n for u, n in held.items() if n > limit}
    over_redis = {u: n for u, n in facts.bought.items() if n > limit}
    finding(
        "per_user_limit",
        not over and not over_redis,
        f"limit {limit}; {len(held)} buyers hold units, max {max(held.values(), default=0)}"
        + (f"; over the limit in the orders: {_sample(f'{u}={n}' for u, n in over.items())}" if over else "")
        + (f"; over the limit in Redis: {_sample(f'{u}={n}' for u, n in over_redis.items())}" if over_redis else ""),
    )

    # Every accepted purchase has exactly one order.
    missing = set(in_flight)
    # A 202 that neither the purchase stream nor an order holds: Redis lost it. (Stream entries every consumer
    # acknowledged are trimmed, so an accepted purchase with its order may be gone from the stream.)
    unlogged = set(facts.acknowledged) - set(facts.stream) - set(by_rid)
    finding(
        "one_order_per_purchase",
        not missing,
        f"{len(accepted)} accepted purchases ({facts.stream_entries} stream entries not trimmed yet, "
        f"{len(facts.acknowledged)} "
        f"acknowledged to clients), {len(by_rid)} with an order"
        + (f"; WITHOUT an order: {_sample(missing)}" if missing else "")
        + (
            f"; acknowledged but in neither the stream nor an order (Redis lost them): {_sample(unlogged)}"
            if unlogged
            else ""
        )
        + (
            f"; {facts.dead_letters} purchase events dead-lettered by the order consumers" if facts.dead_letters else ""
        ),
    )

    # No duplicate orders.
    doubles = {rid for rid, found in by_rid.items() if len(found) > 1}
    phantoms = set(by_rid) - set(accepted) if facts.stream_entries else set()
    finding(
        "no_duplicate_orders",
        not doubles and not phantoms and facts.stream_entries == len(facts.stream),
        f"{len(facts.orders)} orders for {len(by_rid)} reservations"
        + (f"; several orders for: {_sample(doubles)}" if doubles else "")
        + (f"; orders of purchases never accepted: {_sample(phantoms)}" if phantoms else "")
        + (
            f"; the stream holds {facts.stream_entries} entries for {len(facts.stream)} reservations"
            if facts.stream_entries != len(facts.stream)
            else ""
        ),
    )

    # Stock balances.
    recon = facts.reconciliation
    remaining = int(facts.stats["remaining"])
    returned = max(int(facts.stats.get("returned", 0)), int(facts.sale.get("returned_units") or 0))
    total = remaining + pending + in_flight_units + paid + returned
    finding(
        "stock_balances",
        bool(recon["balanced"]) and total == quantity,
        f"remaining {remaining} + pending {pending + in_flight_units} + paid {paid} + returned {returned} = {total}"
        f" (quantity {quantity}); flashsale's reconciliation: "
        + ("balanced" if recon["balanced"] else f"drift {recon['drift']:+d} {recon['problems']}"),
    )

    # No coupon used twice.
    holders: dict[str, list[str]] = defaultdict(list)
    paid_by_template: dict[int, set[str]] = defaultdict(set)
    for order in facts.orders:
        for d in _discounts(order):
            if order["state"] in HOLDING_STATES:
                holders[str(d["coupon_id"])].append(str(order["id"]))
            if order["state"] in PAID_STATES:
                paid_by_template[int(d["template_id"])].add(str(d["coupon_id"]))
    twice = {c: ids for c, ids in holders.items() if len(ids) > 1}
    short = {
        tid: (int(st["used"]), len(paid_by_template.get(tid, ())))
        for tid, st in facts.templates.items()
        if int(st["used"]) < len(paid_by_template.get(tid, ())) or int(st["used"]) > int(st["claimed"])
    }
    finding(
        "no_coupon_used_twice",
        not twice and not short,
        f"{len(holders)} coupons held by live orders, {sum(len(v) for v in paid_by_template.values())} by paid ones"
        + (f"; in several orders: {_sample(f'{c}:{len(ids)}' for c, ids in twice.items())}" if twice else "")
        + (f"; template used counters (used, paid orders): {short}" if short else ""),
    )
    return out


def settled(facts: SaleFacts) -> bool:
    """True when the order consumers have caught up (every accepted purchase has an order) and the reads agree.

    The reads are not one snapshot: an order expiring between reading Redis's counters and the order record
    shows as a unit off; reading again a second later tells such a race from real drift.
    """
    return all(f.ok for f in evaluate(facts) if f.name in ("one_order_per_purchase", "stock_balances"))


def check_sales(
    admin: Admin,
    redis: Redis,
    sale_ids: Sequence[int],
    acknowledged: dict[int, dict[str, tuple[str, int]]],
    wait: float,
) -> tuple[list[Finding], dict[int, SaleFacts]]:
    """Collect each sale's facts (waiting up to `wait` s for in-flight work to land), then evaluate them."""
    findings: list[Finding] = []
    facts_by_sale: dict[int, SaleFacts] = {}
    deadline = time.monotonic() + wait
    for sale_id in sale_ids:
        while True:
            facts = collect(admin, redis, sale_id, acknowledged.get(sale_id, {}))
            if settled(facts) or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        facts_by_sale[sale_id] = facts
        findings += evaluate(facts)
    return findings, facts_by_sale


def finding_line(f: Finding) -> str:
    """One finding as the checker prints it."""
    return f"sale {f.sale_id:<6} {'ok  ' if f.ok else 'FAIL'} {f.name:<24} {f.detail}"


def verdict(findings: Sequence[Finding], sales: int) -> str:
    """The checker's last line: how many sales and checks, and every violated invariant."""
    violations = [f for f in findings if not f.ok]
    names = ", ".join(sorted({f.name for f in violations}))
    held = f"{len(violations)} VIOLATION(S): {names}" if violations else "all held"
    return f"checker: {sales} sale(s), {len(findings)} checks, {held}"


def write_findings(path: Path, findings: Sequence[Finding]) -> bool:
    """The findings as JSON (`ok` and each finding) at `path`; returns whether every invariant held."""
    ok = all(f.ok for f in findings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ok": ok, "findings": [asdict(f) for f in findings]}, indent=2) + "\n")
    return ok


def admin_token() -> str:
    """An admin token signed with the stack's JWT secret."""
    from services.common.auth import issue_token
    from services.common.config import BaseServiceSettings

    return issue_token(BaseServiceSettings(), "loadtest-checker", ["admin"], ttl_seconds=3600)


def run_sales(run_dir: Path) -> list[int]:
    """The sale ids a run recorded in its run.json."""
    data = json.loads((run_dir / "run.json").read_text())
    return [int(s) for s in data["sale_ids"]]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sale", type=int, action="append", default=[], help="a sale id (repeatable)")
    p.add_argument("--run", type=Path, help="a run directory: its run.json sales and accepted.jsonl")
    p.add_argument("--all", action="store_true", help="every sale flashsale lists (newest 500)")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for in-flight orders (default 60)")
    p.add_argument("--mode", choices=("auto", "gateway", "direct"), default=None, help="how to reach the services")
    p.add_argument("--gateway", help="the gateway base URL (default: the launcher's, or :8000 + STACK_PORT_OFFSET)")
    p.add_argument("--redis-url", help="Redis of the stack (default: REDIS_URL, else .stack/backends.env)")
    p.add_argument("--json", type=Path, help="also write the findings here")
    a = p.parse_args(argv)
    if not (a.sale or a.run or a.all):
        p.error("give --sale ID, --run DIR or --all")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    """0: every invariant held; 1: a violation; 2: could not check."""
    args = parse_args(argv)
    admin = Admin(resolve(args.mode, args.gateway), admin_token())
    redis = Redis.from_url(args.redis_url or stack_redis_url(), socket_timeout=10)
    try:
        sale_ids = list(args.sale)
        if args.run:
            sale_ids += run_sales(args.run)
        if args.all:
            sale_ids += [int(s["id"]) for s in admin.get("flashsale", "/admin/sales", {"limit": 500})]
        sale_ids = sorted(set(sale_ids))
        acknowledged = read_acknowledged(args.run / "accepted.jsonl", set(sale_ids)) if args.run else {}
        findings, _facts = check_sales(admin, redis, sale_ids, acknowledged, args.wait)
    except CheckError as exc:
        print(f"checker: could not check: {exc}", file=sys.stderr)
        return 2
    finally:
        admin.close()
        redis.close()
    for f in findings:
        print(finding_line(f))
    violations = [f for f in findings if not f.ok]
    print(verdict(findings, len(sale_ids)))
    if args.json:
        write_findings(args.json, findings)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())

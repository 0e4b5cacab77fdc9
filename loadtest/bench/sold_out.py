"""The purchase benchmark's sold-out phase: the crowd that keeps pressing "buy" after a sale sold out.

Its sale has one unit, bought before the run; then wrk sends the purchase request of the other phase (fresh
Idempotency-Keys, the same 20,000 users) and every answer must be 409 SOLD_OUT. A sold-out sale is answered
without the purchase script, but each request still makes one read-only Redis call (the replay look-up: an
accepted purchase replayed after the sell-out keeps its first answer), so this phase shows what that costs
next to an accepted purchase: requests/s, latency, and server and Redis CPU per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtest.bench.errors import BenchError
from loadtest.bench.sale import Admin, stream_length
from loadtest.bench.wrk import WrkResult


@dataclass
class SoldOutCheck:
    """Whether the sold-out run sold nothing: every answer 409, one unit reserved, one purchase event."""

    sale_id: int
    answered_409: int
    other_answers: dict[str, int]
    reserved: int
    stream_length: int
    ok: bool
    note: str


def seed_sold_out_sale(admin: Admin, base_url: str, tokens_file: Path, tag: str) -> int:
    """A live sale of one unit, bought by the first user; a second buyer is refused SOLD_OUT."""
    sale_id = admin.seed_sale(tag, quantity=1)
    tokens = tokens_file.read_text().split("\n", 2)
    with httpx.Client(base_url=base_url, timeout=15.0) as client:
        for n, expected in ((0, 202), (1, 409)):
            resp = client.post(
                f"/sales/{sale_id}/purchase",
                json={"quantity": 1},
                headers={"Authorization": f"Bearer {tokens[n]}", "Idempotency-Key": f"{tag}-seed-{n}"},
            )
            if resp.status_code != expected:
                raise BenchError(f"sold-out sale {sale_id}: purchase {n} -> {resp.status_code} {resp.text}")
    return sale_id


def verify_sold_out(admin: Admin, redis_url: str, sale_id: int, result: WrkResult) -> SoldOutCheck:
    """Every answer 409 SOLD_OUT, and the sale still holds its one reservation and one event."""
    stats = admin.stats(sale_id)
    events = stream_length(redis_url, sale_id)
    other = {code: n for code, n in result.statuses.items() if code != "409"}
    answered = result.statuses.get("409", 0)
    reserved = int(stats["reserved"])
    ok = not other and reserved == 1 and events == 1 and answered > 0
    note = (
        "every answer 409 SOLD_OUT, nothing sold"
        if ok
        else (f"MISMATCH: answers {result.statuses}, reserved {reserved}, stream {events}")
    )
    return SoldOutCheck(sale_id, answered, other, reserved, events, ok, note)


def cpu_per_request_us(result: WrkResult, who: str) -> float | None:
    """CPU microseconds `who` (servers, redis) spent per request of a run."""
    seconds = result.cpu_seconds.get(who)
    return None if seconds is None or not result.requests else seconds / result.requests * 1e6


def comparison(purchase: WrkResult, sold_out: WrkResult) -> dict[str, Any]:
    """The sold-out path next to an accepted purchase: rates, and CPU per request of servers and Redis."""
    out: dict[str, Any] = {
        "purchase_rps": purchase.rps,
        "sold_out_rps": sold_out.rps,
        "rps_ratio_sold_out_over_purchase": round(sold_out.rps / purchase.rps, 3) if purchase.rps else None,
    }
    for who in ("servers", "redis"):
        accepted, refused = cpu_per_request_us(purchase, who), cpu_per_request_us(sold_out, who)
        out[f"{who}_cpu_us_per_purchase"] = None if accepted is None else round(accepted, 1)
        out[f"{who}_cpu_us_per_sold_out"] = None if refused is None else round(refused, 1)
    server_accepted, server_refused = out["servers_cpu_us_per_purchase"], out["servers_cpu_us_per_sold_out"]
    out["sold_out_cheaper"] = (
        None if server_accepted is None or server_refused is None else server_refused < server_accepted
    )
    return out


def print_comparison(purchase: WrkResult, sold_out: WrkResult, check: SoldOutCheck) -> None:
    """Two lines: what a sold-out answer costs next to an accepted purchase, and whether nothing was sold."""
    c = comparison(purchase, sold_out)

    def us(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f} us"

    print(
        f"sold out vs accepted: {c['sold_out_rps']:,.0f}/s vs {c['purchase_rps']:,.0f}/s; server CPU per request "
        f"{us(c['servers_cpu_us_per_sold_out'])} vs {us(c['servers_cpu_us_per_purchase'])}; Redis CPU per request "
        f"{us(c['redis_cpu_us_per_sold_out'])} vs {us(c['redis_cpu_us_per_purchase'])}; "
        f"cheaper: {'yes' if c['sold_out_cheaper'] else 'NO' if c['sold_out_cheaper'] is False else '-'}"
    )
    print(f"sold out real: {'yes' if check.ok else 'NO'} (sale {check.sale_id}: {check.note})")

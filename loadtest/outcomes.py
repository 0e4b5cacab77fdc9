"""What the shoppers saw, written while they shop, and read back by whoever judges the run.

Plain Python, no Locust (which patches the standard library with gevent the moment it is imported): the
locustfile writes these files, the demo, the drill report and the tests read them. In a run directory:

  accepted.jsonl  one line per 202 purchase, the moment it arrives: reservation_id, sale_id, quantity, user_id,
                  at. The checker holds the system to every line (loadtest/checker.py `read_acknowledged`).
  journeys.jsonl  one line per shopper once it has walked the chain (a `Journey`): the coupon it claimed, what
                  its purchase was answered, the order it got, whether it paid and how that went.
  outcomes.json   every answer's code per request name, the first 202 and the first SOLD_OUT; written when
                  Locust quits.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TextIO

PURCHASE = "POST /sales/{id}/purchase"  # the purchase's request name in Locust's stats and in outcomes.json
# "Try again" or "no answer": nothing happened or the outcome is unknown, so a shopper sends the same
# Idempotency-Key again (the gateway's 503/504 codes say "retry shortly" and carry Retry-After). A purchase whose
# last answer is one of these has an unknown outcome.
RETRY_SAME_KEY = frozenset(
    {
        "RATE_LIMITED",
        "STOCK_UNAVAILABLE",
        "OVERLOADED",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_TIMEOUT",
        "TRANSPORT",
        "HTTP_502",
        "HTTP_503",
        "HTTP_504",
    }
)


@dataclass(slots=True)
class Journey:
    """One shopper's walk through the chain, as the shopper saw it. Times are UNIX seconds, order times ISO 8601."""

    user_id: str
    started_at: float
    claim_key: str | None = None  # the Idempotency-Key of its coupon claim (None: it claimed none)
    claim_code: str | None = None  # "201", or the refusal's code
    claimed_at: float | None = None  # when the claim was answered
    coupon_id: str | None = None  # the coupon it claimed, named in its purchase
    purchase_at: float | None = None  # its first purchase request
    purchase_code: str | None = None  # the last answer to its purchase: "202", or the code
    answered_at: float | None = None  # that last answer
    reservation_id: str | None = None
    quantity: int = 0
    order_code: str | None = None  # "200", or the last answer of its long polls for the order
    order_id: str | None = None
    order_created_at: str | None = None
    order_deadline_at: str | None = None  # when the unpaid order expires
    ordered_at: float | None = None  # when it got the order
    pays: bool = False  # it chose to pay (LOADTEST_PAY_SHARE)
    pay_code: str | None = None  # "200", or the refusal's code
    payment_provider: str | None = None  # the provider that charged it
    pricing_waits: int = 0  # payments answered ORDER_PRICING_PENDING (coupons not applied yet) and retried
    paid_at: float | None = None
    ended_at: float | None = None


class Outcomes:
    """Every answer's code per request name, the first 202 and SOLD_OUT, and the logs of 202s and journeys."""

    def __init__(self, run_dir: Path | None) -> None:
        self.run_dir = run_dir
        self.codes: Counter[tuple[str, str]] = Counter()
        self.first_sold_out: float | None = None
        self.first_accepted: float | None = None
        self.accepted = 0
        self.journeys = 0
        # Line-buffered: each line is on disk when written, so the logs survive a killed load generator.
        self._accepted: TextIO | None = None
        self._journeys: TextIO | None = None
        if run_dir is not None:
            self._accepted = (run_dir / "accepted.jsonl").open("a", buffering=1)
            self._journeys = (run_dir / "journeys.jsonl").open("a", buffering=1)

    def count(self, name: str, code: str) -> None:
        """One answer."""
        self.codes[(name, code)] += 1
        if code == "SOLD_OUT" and self.first_sold_out is None:
            self.first_sold_out = time.time()

    def accept(self, answer: dict[str, Any], user_id: str) -> None:
        """A 202, logged at once for the checker."""
        self.accepted += 1
        if self.first_accepted is None:
            self.first_accepted = time.time()
        if self._accepted is not None:
            rec = {
                "reservation_id": answer["reservation_id"],
                "sale_id": answer["sale_id"],
                "quantity": answer["quantity"],
                "user_id": user_id,
                "at": time.time(),
            }
            self._accepted.write(json.dumps(rec) + "\n")

    def walked(self, journey: Journey) -> None:
        """A shopper finished its walk through the chain."""
        self.journeys += 1
        if self._journeys is not None:
            self._journeys.write(json.dumps(asdict(journey)) + "\n")

    def write(self) -> None:
        """outcomes.json in the run directory."""
        if self.run_dir is None:
            return
        by_name: dict[str, dict[str, int]] = {}
        for (name, code), n in sorted(self.codes.items()):
            by_name.setdefault(name, {})[code] = n
        data = {
            "codes": by_name,
            "accepted": self.accepted,
            "journeys": self.journeys,
            "first_accepted_at": self.first_accepted,
            "first_sold_out_at": self.first_sold_out,
        }
        (self.run_dir / "outcomes.json").write_text(json.dumps(data, indent=2) + "\n")
        for log in (self._accepted, self._journeys):
            if log is not None:
                log.flush()


def read_journeys(run_dir: Path) -> list[Journey]:
    """The journeys a run's shoppers logged, in the order they finished (fields unknown here are ignored)."""
    path = run_dir / "journeys.jsonl"
    if not path.exists():
        return []
    known = {f.name for f in fields(Journey)}
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out.append(Journey(**{k: v for k, v in rec.items() if k in known}))
    return out


def read_codes(run_dir: Path, name: str) -> Counter[str]:
    """Every answer's code to one request name, from the run's outcomes.json (empty when it has none)."""
    path = run_dir / "outcomes.json"
    if not path.exists():
        return Counter()
    codes: dict[str, int] = json.loads(path.read_text()).get("codes", {}).get(name, {})
    return Counter(codes)

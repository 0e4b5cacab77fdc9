"""The benchmark's sales: seeded through flashsale's admin API, then checked against what wrk was answered.

A purchase run counts only if its purchases were real: the 202 answers equal the sale's reserved units and the
length of its event stream, give or take the requests wrk left in flight when it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from redis.exceptions import RedisError

from loadtest.bench.errors import BenchError
from loadtest.bench.wrk import WrkResult
from services.common.auth import issue_token
from services.common.config import BaseServiceSettings
from services.common.contracts import purchase_stream

SALE_QUANTITY = 10_000_000  # a benchmark sale never sells out
PER_USER_LIMIT = 1000
TOKEN_TTL = 6 * 3600


def admin_token() -> str:
    """An admin token signed with the benchmark servers' JWT secret."""
    return issue_token(BaseServiceSettings(), "bench-admin", ["admin"], ttl_seconds=TOKEN_TTL)


def write_tokens(users: int, path: Path) -> None:
    """Mint one customer token per user, one per line (the Lua script reads them)."""
    settings = BaseServiceSettings()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for n in range(users):
            out.write(issue_token(settings, f"bench-user-{n:06d}", ["customer"], ttl_seconds=TOKEN_TTL) + "\n")


class Admin:
    """Admin API client (admin token) for seeding sales and reading their stats."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=15.0)

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            resp = self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise BenchError(f"{method} {path} failed: {exc!r}") from exc
        if resp.status_code >= 300:
            raise BenchError(f"{method} {path} -> {resp.status_code}: {resp.text}")
        data: dict[str, Any] = resp.json()
        return data

    def seed_sale(self, tag: str, *, quantity: int = SALE_QUANTITY) -> int:
        """Create a sale (huge unless told) and start it now; returns its id."""
        now = datetime.now(UTC)
        sale = self._call(
            "POST",
            "/admin/sales",
            {
                "sku": f"BENCH-{tag}",
                "title": f"Benchmark sale {tag}",
                "price": 1999,
                "original_price": 2999,
                "currency": "USD",
                "quantity": quantity,
                "per_user_limit": PER_USER_LIMIT,
                "starts_at": now.isoformat(),
                "ends_at": (now + timedelta(hours=2)).isoformat(),
            },
        )
        sale_id = int(sale["id"])
        started = self._call("POST", f"/admin/sales/{sale_id}/start")
        if started.get("state") != "live":
            raise BenchError(f"sale {sale_id} did not go live: {started}")
        return sale_id

    def stats(self, sale_id: int) -> dict[str, Any]:
        """`GET /admin/sales/{id}/stats`."""
        return self._call("GET", f"/admin/sales/{sale_id}/stats")


def stream_length(redis_url: str, sale_id: int) -> int:
    """Entries of the sale's purchase event stream `{fs:<id>}:events`."""
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        return int(client.xlen(purchase_stream(sale_id)))
    except RedisError as exc:
        raise BenchError(f"could not read the event stream of sale {sale_id}: {exc}") from exc
    finally:
        client.close()


@dataclass
class Verification:
    """Whether the 202 answers of a purchase run match what the sale recorded."""

    sale_id: int
    answered_202: int
    in_flight_at_stop: int
    reserved: int
    stream_length: int
    ok_attempts: int
    ok: bool
    note: str


def verify_purchases(admin: Admin, redis_url: str, sale_id: int, result: WrkResult) -> Verification:
    """202 answers = reserved units = purchase events; requests wrk abandoned at the stop may add to both."""
    time.sleep(0.5)  # let the servers finish requests wrk left in flight
    stats = admin.stats(sale_id)
    events = stream_length(redis_url, sale_id)
    reserved = int(stats["reserved"])
    answered = result.status_202
    extra = reserved - answered
    ok_attempts = int(stats["attempts"].get("ok", 0))
    ok = events == reserved == ok_attempts and 0 <= extra <= result.in_flight_at_stop and result.status_other_2xx == 0
    if not ok:
        note = (
            f"MISMATCH: {answered} answers 202, reserved {reserved}, stream {events}, "
            f"ok attempts {ok_attempts}, {result.in_flight_at_stop} requests in flight when wrk stopped"
        )
    elif extra == 0:
        note = "exact: 202 answers = reserved = stream length"
    else:
        note = f"{extra} purchase(s) of requests wrk abandoned at the stop (of {result.in_flight_at_stop} in flight)"
    return Verification(
        sale_id=sale_id,
        answered_202=answered,
        in_flight_at_stop=result.in_flight_at_stop,
        reserved=reserved,
        stream_length=events,
        ok_attempts=ok_attempts,
        ok=ok,
        note=note,
    )

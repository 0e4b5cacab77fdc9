"""Seed one load-test run: a warehouse SKU, a flash sale allocated from it, a coupon template for the sale, and
the shoppers' tokens; written to <run dir>/run.json (the locustfile and the checker read it).

    .venv/bin/python -m loadtest.seed --run-dir loadtest/results/try --quantity 500 --start-in 15 --users 2000
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from loadtest.targets import Targets, resolve
from services.common.contracts import claim_stream, purchase_stream
from services.coupon.store import claims_key, template_key
from services.flashsale.store import bought_key, reservations_key, sale_key

PRICE = 1999  # minor units
ORIGINAL_PRICE = 4999
COUPON_OFF = 300  # the run's coupon: $3.00 off one unit of the sale
TOKEN_TTL = 6 * 3600


class SeedError(Exception):
    """An admin call failed; the message says which."""


def _call(client: httpx.Client, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = client.request(method, url, json=body)
    if resp.status_code >= 300:
        raise SeedError(f"{method} {url} answered {resp.status_code}: {resp.text[:500]}")
    data: dict[str, Any] = resp.json()
    return data


def mint_tokens(path: Path, prefix: str, users: int) -> None:
    """One `user_id token` line per shopper, signed with the stack's JWT secret (no dev endpoint needed)."""
    from services.common.auth import issue_token
    from services.common.config import BaseServiceSettings

    settings = BaseServiceSettings()
    with path.open("w") as out:
        for n in range(users):
            user = f"{prefix}-{n:06d}"
            out.write(f"{user} {issue_token(settings, user, ['customer'], ttl_seconds=TOKEN_TTL)}\n")


def admin_client() -> httpx.Client:
    """An HTTP client with an admin token."""
    from services.common.auth import issue_token
    from services.common.config import BaseServiceSettings

    token = issue_token(BaseServiceSettings(), "loadtest-admin", ["admin"], ttl_seconds=TOKEN_TTL)
    return httpx.Client(timeout=30.0, headers={"authorization": f"Bearer {token}"})


@dataclass(frozen=True, slots=True)
class SaleSeed:
    """What one run sells: the sale, its SKU's warehouse stock and its coupon template."""

    quantity: int
    limit: int
    start_in: float
    duration_minutes: float
    users: int
    coupons: int  # coupons of the sale's template (0: no template)
    stock: int | None = None  # units of the SKU in the warehouse (default: the sale's quantity)
    low_stock: int = 0  # the SKU's low-stock alert, units (0: none)
    coupon_tiers: tuple[tuple[int, int], ...] = ()  # (spend, off) tiers; none: COUPON_OFF off one unit
    title: str = "Load test"
    sku_prefix: str = "LT"


def coupon_template_body(sale_id: int, seed: SaleSeed, tag: str) -> dict[str, Any]:
    """The run's coupon template, scoped to its sale, one per shopper: tiered when tiers are given."""
    body: dict[str, Any] = {
        "scope": "sales",
        "scope_sales": [sale_id],
        "total_quantity": seed.coupons,
        "per_user_limit": 1,
        "valid_days": 1,
    }
    if not seed.coupon_tiers:
        return {**body, "name": f"{seed.title} {tag}: $3 off", "kind": "fixed_off", "amount_off": COUPON_OFF}
    tiers = ", ".join(f"spend {money(spend)} save {money(off)}" for spend, off in seed.coupon_tiers)
    return {
        **body,
        "name": f"Sale {sale_id}: {tiers}",
        "kind": "tiered",
        "tiers": [{"spend": spend, "off": off} for spend, off in seed.coupon_tiers],
    }


def money(minor: int) -> str:
    """Minor units as dollars, e.g. $19.99."""
    return f"${minor / 100:,.2f}"


def stale_keys(redis_url: str, sale_id: int, template_id: int | None) -> list[str]:
    """Keys Redis holds of a sale or a coupon template the databases just created (so Redis outlived them)."""
    from redis import Redis

    client = Redis.from_url(redis_url, socket_timeout=5, decode_responses=True)
    try:
        keys = [sale_key(sale_id), reservations_key(sale_id), bought_key(sale_id), purchase_stream(sale_id)]
        if template_id is not None:
            keys += [claims_key(template_id), claim_stream(template_id)]
        stale = [key for key in keys if client.exists(key)]
        if template_id is not None and int(client.hget(template_key(template_id), "claimed") or 0):
            stale.append(f"{template_key(template_id)} claimed")
        return stale
    finally:
        client.close()


def refuse_stale_keys(redis_url: str, sale_id: int, template_id: int | None) -> None:
    """Raise SeedError when Redis already holds keys of the new sale or template: its warm-up would sell old stock."""
    stale = stale_keys(redis_url, sale_id, template_id)
    if stale:
        raise SeedError(
            f"Redis at {redis_url} already holds keys of sale {sale_id} or coupon template {template_id} "
            f"({', '.join(stale)}) that the databases no longer have (were they recreated and Redis kept?). "
            "Flush that Redis database, or start from empty private backends (`make clean`, then "
            "`python -m deploy demo --private`)"
        )


def _create_sale(
    client: httpx.Client, targets: Targets, seed: SaleSeed, sku: str, tag: str, starts_at: datetime
) -> dict[str, Any]:
    """The SKU in the warehouse, then the sale (a draft) allocated from it."""
    _call(
        client,
        "POST",
        targets.url("inventory", "/admin/skus"),
        {
            "sku": sku,
            "name": f"{seed.title} {tag}",
            "initial_stock": seed.quantity if seed.stock is None else seed.stock,
            "low_stock_threshold": seed.low_stock,
        },
    )
    return _call(
        client,
        "POST",
        targets.url("flashsale", "/admin/sales"),
        {
            "sku": sku,
            "title": f"{seed.title} sale {tag}",
            "price": PRICE,
            "original_price": ORIGINAL_PRICE,
            "currency": "USD",
            "quantity": seed.quantity,
            "per_user_limit": seed.limit,
            "starts_at": starts_at.isoformat(),
            "ends_at": (starts_at + timedelta(minutes=seed.duration_minutes)).isoformat(),
            "low_stock_threshold_pct": 10,
        },
    )


def seed_sale(
    targets: Targets, run_dir: Path, seed: SaleSeed, *, redis_url: str | None = None, tag: str | None = None
) -> dict[str, Any]:
    """Create the SKU, the sale, its coupon template and the tokens, then schedule the sale; returns run.json.

    With `redis_url`, a sale or template whose keys that Redis already holds is refused before it is scheduled
    (its warm-up would start from the old stock).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    tag = tag or uuid.uuid4().hex[:6]
    sku = f"{seed.sku_prefix}-{tag}"
    starts_at = datetime.now(UTC) + timedelta(seconds=seed.start_in)
    with admin_client() as client:
        sale = _create_sale(client, targets, seed, sku, tag, starts_at)
        sale_id = int(sale["id"])
        template = None
        if seed.coupons:
            body = coupon_template_body(sale_id, seed, tag)
            template = _call(client, "POST", targets.url("coupon", "/admin/templates"), body)
        if redis_url:
            refuse_stale_keys(redis_url, sale_id, int(template["id"]) if template else None)
        _call(client, "POST", targets.url("flashsale", f"/admin/sales/{sale_id}/schedule"))
    tokens = run_dir / "tokens.txt"
    mint_tokens(tokens, f"lt-{tag}", seed.users)
    run = {
        "tag": tag,
        "sale_ids": [sale_id],
        "sale_id": sale_id,
        "sku": sku,
        "stock": seed.quantity if seed.stock is None else seed.stock,
        "quantity": seed.quantity,
        "per_user_limit": seed.limit,
        "price": PRICE,
        "starts_at": starts_at.isoformat(),
        "coupon_template_id": int(template["id"]) if template else None,
        "coupon_template": template,
        "tokens_file": str(tokens),
        "users": seed.users,
        "mode": targets.mode,
        "created_at": datetime.now(UTC).isoformat(),
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    for log in ("accepted.jsonl", "journeys.jsonl"):  # the shoppers' logs of an earlier run in this directory
        (run_dir / log).unlink(missing_ok=True)
    return run


def seed_run(
    targets: Targets,
    run_dir: Path,
    *,
    quantity: int,
    limit: int,
    start_in: float,
    duration_minutes: float,
    users: int,
    coupons: int,
) -> dict[str, Any]:
    """Create the SKU, the sale (scheduled `start_in` s from now), its coupon template and the tokens."""
    seed = SaleSeed(quantity, limit, start_in, duration_minutes, users, coupons)
    return seed_sale(targets, run_dir, seed)


def read_tokens(path: Path) -> list[tuple[str, str]]:
    """(user id, token) pairs of a tokens file, in the order they were minted."""
    pairs = []
    for line in path.read_text().splitlines():
        user, _, token = line.partition(" ")
        if token:
            pairs.append((user, token))
    return pairs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--quantity", type=int, default=500)
    p.add_argument("--limit", type=int, default=2, help="per-user limit")
    p.add_argument("--start-in", type=float, default=15.0, help="seconds until the sale starts")
    p.add_argument("--minutes", type=float, default=30.0, help="how long the sale stays open")
    p.add_argument("--users", type=int, default=2000, help="tokens to mint (distinct shoppers)")
    p.add_argument("--coupons", type=int, default=200, help="coupons of the sale's template (0: none)")
    p.add_argument("--mode", choices=("auto", "gateway", "direct"), default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Seed and print run.json."""
    a = parse_args(argv)
    try:
        run = seed_run(
            resolve(a.mode),
            a.run_dir,
            quantity=a.quantity,
            limit=a.limit,
            start_in=a.start_in,
            duration_minutes=a.minutes,
            users=a.users,
            coupons=a.coupons,
        )
    except (SeedError, httpx.HTTPError) as exc:
        print(f"seed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(run, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seed one load-test run: a warehouse SKU, a flash sale allocated from it, a coupon template for the sale, and
the shoppers' tokens; written to <run dir>/run.json (the locustfile and the checker read it).

    .venv/bin/python loadtest/seed.py --run-dir loadtest/results/try --quantity 500 --start-in 15 --users 2000
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from targets import Targets, resolve  # a neighbour: loadtest/ scripts run by path

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
    run_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    sku = f"LT-{tag}"
    starts_at = datetime.now(UTC) + timedelta(seconds=start_in)
    with admin_client() as client:
        _call(
            client,
            "POST",
            targets.url("inventory", "/admin/skus"),
            {"sku": sku, "name": f"Load test {tag}", "initial_stock": quantity, "low_stock_threshold": 0},
        )
        sale = _call(
            client,
            "POST",
            targets.url("flashsale", "/admin/sales"),
            {
                "sku": sku,
                "title": f"Load test sale {tag}",
                "price": PRICE,
                "original_price": ORIGINAL_PRICE,
                "currency": "USD",
                "quantity": quantity,
                "per_user_limit": limit,
                "starts_at": starts_at.isoformat(),
                "ends_at": (starts_at + timedelta(minutes=duration_minutes)).isoformat(),
                "low_stock_threshold_pct": 10,
            },
        )
        sale_id = int(sale["id"])
        _call(client, "POST", targets.url("flashsale", f"/admin/sales/{sale_id}/schedule"))
        template_id = None
        if coupons:
            template = _call(
                client,
                "POST",
                targets.url("coupon", "/admin/templates"),
                {
                    "name": f"Load test {tag}: $3 off",
                    "kind": "fixed_off",
                    "amount_off": COUPON_OFF,
                    "scope": "sales",
                    "scope_sales": [sale_id],
                    "total_quantity": coupons,
                    "per_user_limit": 1,
                    "valid_days": 1,
                },
            )
            template_id = int(template["id"])
    tokens = run_dir / "tokens.txt"
    mint_tokens(tokens, f"lt-{tag}", users)
    run = {
        "tag": tag,
        "sale_ids": [sale_id],
        "sale_id": sale_id,
        "sku": sku,
        "quantity": quantity,
        "per_user_limit": limit,
        "starts_at": starts_at.isoformat(),
        "coupon_template_id": template_id,
        "tokens_file": str(tokens),
        "users": users,
        "mode": targets.mode,
        "created_at": datetime.now(UTC).isoformat(),
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    (run_dir / "accepted.jsonl").unlink(missing_ok=True)
    return run


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

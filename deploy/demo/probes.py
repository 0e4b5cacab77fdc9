"""What the demo asks the system itself, as one of the crowd's shoppers, once the crowd is done.

A coupon holder's claim repeated with its own Idempotency-Key must return the same coupon and a second claim with
a new key must be refused (one per buyer); a holder whose coupon is still in the wallet is quoted one and two
units; unpaid orders whose deadline is too far away to wait for are cancelled; and a buyer's wallet is read back
to see that the coupons of unpaid orders are available again.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from deploy.demo.crowd import BurstResult, Claims, OrdersResult
from deploy.errors import StackError
from deploy.state import say
from loadtest import seed
from loadtest.targets import Targets

PROBES_IN_FLIGHT = 8  # calls at once
MAX_DEMO_WAIT = 60  # seconds: longer to pay than this and the buyers cancel their unpaid orders instead


class Shoppers:
    """Calls through the targets as one of the run's shoppers (user id -> token from the run's tokens file)."""

    def __init__(self, targets: Targets, tokens_file: Path) -> None:
        self.targets = targets
        self.tokens = dict(seed.read_tokens(tokens_file))
        self.client = httpx.Client(timeout=15.0)

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def call(self, user: str, method: str, service: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request with the user's token (and `key` as its Idempotency-Key)."""
        headers = {"authorization": f"Bearer {self.tokens[user]}"}
        key = kwargs.pop("key", None)
        if key is not None:
            headers["idempotency-key"] = key
        return self.client.request(method, self.targets.url(service, path), headers=headers, **kwargs)

    def wallet(self, user: str) -> set[str]:
        """The coupons available in the user's wallet."""
        resp = self.call(user, "GET", "coupon", "/wallet", params={"state": "available"})
        if resp.status_code != 200:
            raise StackError(f"GET /wallet answered {resp.status_code}: {resp.text}")
        return {str(c["coupon_id"]) for c in resp.json()}


def problem_code(resp: httpx.Response) -> str:
    """The `code` of a problem+json answer, else HTTP_<status>."""
    try:
        body = resp.json()
    except ValueError:
        body = {}
    return str(body.get("code", "")) if isinstance(body, dict) and body.get("code") else f"HTTP_{resp.status_code}"


def replay_claims(shoppers: Shoppers, claims: Claims) -> None:
    """Each holder repeats its claim with the same Idempotency-Key, then claims again with a new one."""
    path = f"/templates/{int(claims.template['id'])}/claim"

    def claim(user: str, key: str) -> tuple[str, str | None]:
        try:
            resp = shoppers.call(user, "POST", "coupon", path, key=key)
        except httpx.HTTPError as exc:
            return type(exc).__name__, None
        return ("CLAIMED", str(resp.json()["coupon_id"])) if resp.status_code == 201 else (problem_code(resp), None)

    def holder(user: str) -> tuple[str, str | None, str]:
        outcome, again = claim(user, claims.keys[user])
        second, _coupon = claim(user, uuid.uuid4().hex)
        return outcome, again, second

    with ThreadPoolExecutor(PROBES_IN_FLIGHT) as pool:
        answers = list(zip(claims.coupons, pool.map(holder, list(claims.coupons)), strict=True))
    for user, (outcome, again, second) in answers:
        if again == claims.coupons[user]:
            claims.replayed_same += 1
        else:
            claims.replayed_other[outcome if again is None else "ANOTHER_COUPON"] += 1
        claims.second[second] += 1


def quote_a_holder(shoppers: Shoppers, run: dict[str, Any], claims: Claims, burst: BurstResult) -> None:
    """The best price of one and of two units with the wallet's coupons (`coupon_ids: null`), for a holder that
    bought nothing (its coupon is still in the wallet)."""
    buyers = {user for user, _units in burst.reservations.values()}
    holders = sorted(user for user in claims.coupons if user not in buyers)
    if not holders:
        return
    for units in (1, 2):
        line = {"sku": run["sku"], "sale_id": int(run["sale_id"]), "unit_price": seed.PRICE, "quantity": units}
        resp = shoppers.call(holders[0], "POST", "coupon", "/quote", json={"lines": [line], "coupon_ids": None})
        if resp.status_code != 200:
            raise StackError(f"POST /quote answered {resp.status_code}: {resp.text}")
        claims.quotes.append((units, resp.json()))


def cancel_if_too_long(shoppers: Shoppers, orders: OrdersResult) -> None:
    """Cancel the unpaid orders when their deadline is more than MAX_DEMO_WAIT away (order replicas not ours)."""
    deadlines = [datetime.fromisoformat(j.order_deadline_at) for j in orders.unpaid if j.order_deadline_at]
    if not deadlines or (max(deadlines) - datetime.now(UTC)).total_seconds() <= MAX_DEMO_WAIT:
        return
    say(
        "the running order replicas give more than a minute to pay (not started by this demo); "
        f"the buyers cancel their {len(orders.unpaid)} unpaid orders instead of waiting"
    )

    def cancel(user: str, order_id: str) -> bool:
        resp = shoppers.call(user, "POST", "order", f"/orders/{order_id}/cancel", key=uuid.uuid4().hex)
        return resp.status_code == 200

    with ThreadPoolExecutor(PROBES_IN_FLIGHT) as pool:
        done = pool.map(cancel, [j.user_id for j in orders.unpaid], [str(j.order_id) for j in orders.unpaid])
        orders.cancelled = sum(done)

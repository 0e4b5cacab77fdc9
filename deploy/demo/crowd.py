"""The demo's crowd, through the gateway: coupon claims before the sale, the purchase burst, then the orders.

Each 202 is logged to the run's accepted.jsonl the way the load test's clients log theirs, so the checker holds
the system to every purchase it acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from deploy.state import say

ORDER_CONCURRENCY = 20  # order calls in flight at once during the demo
LONG_POLL_SECONDS = 10
MAX_DEMO_WAIT = 60  # seconds: longer to pay than this and the buyers cancel their unpaid orders instead
PRICING_RETRIES = 20  # a payment of an order still being priced with its coupons is retried every 0.5 s
COUPON_CONCURRENCY = 50  # claims in flight at once


@dataclass(frozen=True, slots=True)
class Shoppers:
    """The run's shoppers: user ids and their tokens, by index."""

    users: list[str]
    tokens: list[str]

    def auth(self, buyer: int) -> dict[str, str]:
        """The buyer's Authorization header."""
        return {"authorization": f"Bearer {self.tokens[buyer]}"}


def problem_code(resp: httpx.Response) -> str:
    """The `code` of a problem+json answer, else HTTP_<status>."""
    try:
        body = resp.json()
    except ValueError:
        body = {}
    return str(body.get("code", "")) if isinstance(body, dict) and body.get("code") else f"HTTP_{resp.status_code}"


def spread(users: int, n: int) -> list[int]:
    """n buyers spread evenly over the crowd (so that some of them get to buy before the stock runs out)."""
    n = min(n, users)
    return [i * users // n for i in range(n)]


@dataclass(slots=True)
class BurstResult:
    """What the buyers saw."""

    requests: int = 0
    accepted: int = 0  # 202 answers
    units: int = 0  # sum of quantities in 202 answers
    rejections: Counter[str] = field(default_factory=Counter)
    transport_errors: int = 0
    elapsed: float = 0.0
    reservations: dict[str, tuple[int, int]] = field(default_factory=dict)  # reservation id -> (buyer, units)
    coupon_of: dict[str, str] = field(default_factory=dict)  # reservation id -> the coupon its purchase named


class Burst:
    """Every buyer tries to buy one unit up to `attempts` times, alternating replicas; sold out stops them.

    A buyer holding a coupon (buyer -> coupon id) names it in each purchase until one is accepted.
    """

    def __init__(self, *, sale_id: int, shoppers: Shoppers, coupons: dict[int, str], log: Path) -> None:
        self.path = f"/sales/{sale_id}/purchase"
        self.sale_id = sale_id
        self.shoppers = shoppers
        self.unspent = dict(coupons)
        self.result = BurstResult()
        self.log = log

    async def buy(self, client: httpx.AsyncClient, buyer: int) -> str | None:
        """One attempt; returns the rejection code, or None when accepted."""
        headers = {**self.shoppers.auth(buyer), "idempotency-key": uuid.uuid4().hex}
        coupon = self.unspent.get(buyer)
        body: dict[str, Any] = {"quantity": 1} if coupon is None else {"quantity": 1, "coupon_ids": [coupon]}
        self.result.requests += 1
        try:
            resp = await client.post(self.path, json=body, headers=headers)
        except httpx.HTTPError:
            self.result.transport_errors += 1
            return "TRANSPORT_ERROR"
        if resp.status_code == 202:
            self.accept(resp.json(), buyer, coupon)
            return None
        code = problem_code(resp)
        self.result.rejections[code] += 1
        return code

    def accept(self, answer: dict[str, Any], buyer: int, coupon: str | None) -> None:
        """Count a 202 and log it for the checker at once."""
        rid, units = str(answer["reservation_id"]), int(answer["quantity"])
        self.result.accepted += 1
        self.result.units += units
        self.result.reservations[rid] = (buyer, units)
        if coupon is not None:
            self.result.coupon_of[rid] = self.unspent.pop(buyer)
        record = {"reservation_id": rid, "sale_id": self.sale_id, "quantity": units}
        with self.log.open("a") as out:
            out.write(json.dumps({**record, "user_id": self.shoppers.users[buyer], "at": time.time()}) + "\n")

    async def worker(self, bases: list[str], queue: asyncio.Queue[int], attempts: int) -> None:
        """One buyer in flight at a time, with a keep-alive connection to each base URL."""
        # Many small pools keep the client cheap (one pool of hundreds of connections costs more CPU than the server).
        timeout = httpx.Timeout(15.0)
        limits = httpx.Limits(max_connections=1)
        clients = [httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) for base in bases]
        try:
            while not queue.empty():
                buyer = queue.get_nowait()
                for attempt in range(attempts):
                    if await self.buy(clients[(buyer + attempt) % len(clients)], buyer) == "SOLD_OUT":
                        break
        finally:
            for client in clients:
                await client.aclose()

    async def run(self, bases: list[str], *, attempts: int, concurrency: int) -> BurstResult:
        """The whole crowd, `concurrency` buyers at a time."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        for buyer in range(len(self.shoppers.tokens)):
            queue.put_nowait(buyer)
        start = time.perf_counter()
        await asyncio.gather(*(self.worker(bases, queue, attempts) for _ in range(max(1, concurrency))))
        self.result.elapsed = time.perf_counter() - start
        return self.result


@dataclass(slots=True)
class OrdersResult:
    """What the buyers saw of their orders."""

    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # reservation id -> the order
    missing: Counter[str] = field(default_factory=Counter)  # reservations without an order, by answer
    paid: dict[str, dict[str, Any]] = field(default_factory=dict)  # order id -> the answer of its payment
    unpaid: list[dict[str, Any]] = field(default_factory=list)  # orders left unpaid on purpose
    pay_failures: Counter[str] = field(default_factory=Counter)  # refused payments, by code
    cancelled: int = 0  # unpaid orders the buyers cancelled (too long to wait for their deadline)
    pricing_waits: int = 0  # payments answered ORDER_PRICING_PENDING (coupons not applied yet) and retried
    fetch_elapsed: float = 0.0
    pay_elapsed: float = 0.0


class Checkout:
    """Each buyer long-polls the order of each reservation, then pays a share of the orders.

    Calls alternate between the base URLs, each with the buyer's own token, ORDER_CONCURRENCY at a time.
    """

    def __init__(self, bases: list[str], shoppers: Shoppers, reservations: dict[str, tuple[int, int]]) -> None:
        self.shoppers = shoppers
        self.reservations = reservations
        self.result = OrdersResult()
        self.limit = asyncio.Semaphore(ORDER_CONCURRENCY)
        timeout = httpx.Timeout(LONG_POLL_SECONDS + 10.0)
        limits = httpx.Limits(max_connections=ORDER_CONCURRENCY)
        self.clients = [httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) for base in bases]

    def client(self, n: int) -> httpx.AsyncClient:
        """The n-th call's client (round robin)."""
        return self.clients[n % len(self.clients)]

    def headers(self, order: dict[str, Any]) -> dict[str, str]:
        """The order's buyer's token and a fresh Idempotency-Key."""
        buyer = self.reservations[order["reservation_id"]][0]
        return {**self.shoppers.auth(buyer), "idempotency-key": uuid.uuid4().hex}

    async def fetch(self, n: int, rid: str, buyer: int) -> None:
        """The order of one reservation (long poll)."""
        async with self.limit:
            try:
                resp = await self.client(n).get(
                    f"/orders/by-reservation/{rid}",
                    params={"wait": LONG_POLL_SECONDS},
                    headers=self.shoppers.auth(buyer),
                )
            except httpx.HTTPError as exc:
                self.result.missing[type(exc).__name__] += 1
                return
        if resp.status_code == 200:
            self.result.orders[rid] = resp.json()
        else:
            self.result.missing[problem_code(resp)] += 1

    async def pay(self, n: int, order: dict[str, Any]) -> None:
        """Pay one order; an order still being priced with its coupons is paid once it is priced."""
        headers = self.headers(order)
        for _attempt in range(PRICING_RETRIES):
            async with self.limit:
                try:
                    resp = await self.client(n).post(f"/orders/{order['id']}/pay", headers=headers)
                except httpx.HTTPError as exc:
                    self.result.pay_failures[type(exc).__name__] += 1
                    return
            if resp.status_code != 409 or problem_code(resp) != "ORDER_PRICING_PENDING":
                break
            self.result.pricing_waits += 1
            await asyncio.sleep(0.5)
        if resp.status_code == 200:
            self.result.paid[order["id"]] = resp.json()
        else:
            self.result.pay_failures[problem_code(resp)] += 1

    async def cancel(self, n: int, order: dict[str, Any]) -> None:
        """Cancel one unpaid order."""
        async with self.limit:
            resp = await self.client(n).post(f"/orders/{order['id']}/cancel", headers=self.headers(order))
        if resp.status_code == 200:
            self.result.cancelled += 1

    async def cancel_if_too_long(self) -> None:
        """Cancel the unpaid orders when their deadline is more than MAX_DEMO_WAIT away (replicas not ours)."""
        latest = max((datetime.fromisoformat(o["deadline_at"]) for o in self.result.unpaid), default=None)
        if latest is None or (latest - datetime.now(UTC)).total_seconds() <= MAX_DEMO_WAIT:
            return
        say(
            "the running order replicas give more than a minute to pay (not started by this demo); "
            f"the buyers cancel their {len(self.result.unpaid)} unpaid orders instead of waiting"
        )
        await asyncio.gather(*(self.cancel(n, order) for n, order in enumerate(self.result.unpaid)))

    async def run(self, pay_share: float) -> OrdersResult:
        """Fetch every order, pay `pay_share` of them (a random choice), leave or cancel the rest."""
        try:
            start = time.perf_counter()
            await asyncio.gather(
                *(self.fetch(n, rid, buyer) for n, (rid, (buyer, _u)) in enumerate(sorted(self.reservations.items())))
            )
            self.result.fetch_elapsed = time.perf_counter() - start
            orders = sorted(self.result.orders.values(), key=lambda o: str(o["id"]))  # random ids: a random choice
            cut = round(len(orders) * pay_share)
            to_pay, self.result.unpaid = orders[:cut], orders[cut:]
            start = time.perf_counter()
            await asyncio.gather(*(self.pay(n, order) for n, order in enumerate(to_pay)))
            self.result.pay_elapsed = time.perf_counter() - start
            await self.cancel_if_too_long()
        finally:
            for client in self.clients:
                await client.aclose()
        return self.result


@dataclass(slots=True)
class Claims:
    """The demo's coupon template and what its claimers got."""

    template: dict[str, Any]
    claimers: int = 0
    coupons: dict[int, str] = field(default_factory=dict)  # buyer -> the coupon claimed
    refused: Counter[str] = field(default_factory=Counter)  # first claims refused, by code
    replayed_same: int = 0  # a claim repeated with the same Idempotency-Key answered with the same coupon
    replayed_other: Counter[str] = field(default_factory=Counter)  # ... answered otherwise, by answer
    second: Counter[str] = field(default_factory=Counter)  # a second claim (new key) by a holder, by answer
    requests: int = 0
    elapsed: float = 0.0
    quotes: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (units, a holder's best quote)


class Claiming:
    """Each claimer claims one coupon, alternating replicas; a holder then repeats the claim with the same
    Idempotency-Key (must return the same coupon) and tries a second one with a new key (must be refused)."""

    def __init__(self, bases: list[str], claims: Claims, shoppers: Shoppers) -> None:
        self.path = f"/templates/{int(claims.template['id'])}/claim"
        self.claims = claims
        self.shoppers = shoppers
        self.limit = asyncio.Semaphore(COUPON_CONCURRENCY)
        timeout, limits = httpx.Timeout(15.0), httpx.Limits(max_connections=COUPON_CONCURRENCY)
        self.clients = [httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) for base in bases]

    async def claim(self, n: int, buyer: int, key: str) -> tuple[str, str | None]:
        """(outcome, coupon id): outcome CLAIMED or the refusal's code."""
        headers = {**self.shoppers.auth(buyer), "idempotency-key": key}
        self.claims.requests += 1
        try:
            resp = await self.clients[n % len(self.clients)].post(self.path, headers=headers)
        except httpx.HTTPError as exc:
            return type(exc).__name__, None
        if resp.status_code == 201:
            return "CLAIMED", str(resp.json()["coupon_id"])
        return problem_code(resp), None

    async def claimer(self, n: int, buyer: int) -> None:
        """One claimer: a claim, its retry on the other replica, a second claim."""
        async with self.limit:
            key = uuid.uuid4().hex
            outcome, coupon = await self.claim(n, buyer, key)
            if coupon is None:
                self.claims.refused[outcome] += 1
                return
            self.claims.coupons[buyer] = coupon
            outcome, again = await self.claim(n + 1, buyer, key)
            if again == coupon:
                self.claims.replayed_same += 1
            else:
                self.claims.replayed_other[outcome if again is None else "ANOTHER_COUPON"] += 1
            outcome, _second = await self.claim(n, buyer, uuid.uuid4().hex)
            self.claims.second[outcome] += 1

    async def run(self, claimers: list[int]) -> Claims:
        """Every claimer, COUPON_CONCURRENCY at a time."""
        self.claims.claimers = len(claimers)
        try:
            start = time.perf_counter()
            await asyncio.gather(*(self.claimer(n, buyer) for n, buyer in enumerate(claimers)))
            self.claims.elapsed = time.perf_counter() - start
        finally:
            for client in self.clients:
                await client.aclose()
        return self.claims

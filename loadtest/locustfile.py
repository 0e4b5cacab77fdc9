"""The full-chain load test: shoppers walk the whole chain, through the gateway (or straight to the services).

    .venv/bin/locust -f loadtest/locustfile.py --headless --csv loadtest/results/x/locust --html ...

A Shopper lists the live sales, claims a coupon (some of them), opens the sale and polls its countdown, buys
at the start (retrying with the same Idempotency-Key on 429/503/504/no answer), waits for the order (long poll),
previews the price with the coupon, and pays (LOADTEST_PAY_SHARE of them; the others never pay, so their
orders expire). Then it keeps browsing and now and then tries to buy again (the per-user limit answers).
A WindowShopper only browses and polls. Business answers (SOLD_OUT, SALE_NOT_LIVE, PURCHASE_LIMIT_EXCEEDED,
an order not created yet) count as successes in Locust's stats; everything else is a failure named by its
problem+json `code`. Every answer's code is also counted in <run dir>/outcomes.json, every 202 is logged to
<run dir>/accepted.jsonl the moment it arrives (the checker holds the system to it), and each Shopper's walk
through the chain to <run dir>/journeys.jsonl (loadtest/outcomes.py). In the `journeys` shape (the demo's crowd)
only Shoppers come, each walks the chain once and then waits, and the run ends when all of them have walked it.

Environment:
  LOADTEST_RUN_DIR       run directory with run.json (from seed.py): sale, coupon template, tokens file
  LOADTEST_MODE          gateway | direct | auto (default: the gateway when it answers)
  LOADTEST_GATEWAY       gateway base URL (default :8000 + STACK_PORT_OFFSET)
  LOADTEST_SHAPE         flash | steps | soak | smoke | journeys (unset: Locust's -u/-r/-t decide)
  LOADTEST_NORMAL_PEAK   users at the normal peak (default 50); LOADTEST_MULTIPLE its multiple (default 5)
  LOADTEST_HOLD          seconds a flash crowd / smoke / journeys run lasts at most (default 60 / 20 / 120)
  LOADTEST_USERS         journeys: shoppers (default 100), on at LOADTEST_SPAWN_RATE users/s (default 100)
  LOADTEST_SOAK_SECONDS  length of the soak (default 1800); LOADTEST_STEP_SECONDS each step (default 30)
  LOADTEST_PAY_SHARE     share of orders paid (default 0.7); LOADTEST_COUPON_SHARE share claiming a coupon (0.3)
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

# time.sleep yields to the other users: Locust monkey-patches the standard library with gevent.
from locust import FastHttpUser, LoadTestShape, User, between, events, task
from locust.env import Environment

from loadtest import shapes
from loadtest.outcomes import PURCHASE, RETRY_SAME_KEY, Journey, Outcomes
from loadtest.report import BUSINESS_CODES
from loadtest.targets import Targets, resolve

ORDER_WAIT_SECONDS = 10
ORDER_POLLS = 9  # up to ~90 s for an order: PostgreSQL may be down for 30 s in a drill
LINGER_SECONDS = 3600  # journeys shape: longer than any run, which ends (and wakes them) once all have walked


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


RUN_DIR = Path(os.environ["LOADTEST_RUN_DIR"]) if os.environ.get("LOADTEST_RUN_DIR") else None
RUN: dict[str, Any] = json.loads((RUN_DIR / "run.json").read_text()) if RUN_DIR else {}
TARGETS: Targets = resolve()
PAY_SHARE = _env_float("LOADTEST_PAY_SHARE", 0.7)
COUPON_SHARE = _env_float("LOADTEST_COUPON_SHARE", 0.3)
SHAPE = os.environ.get("LOADTEST_SHAPE", "").strip().lower()
ONE_JOURNEY = SHAPE == "journeys"  # each shopper walks the chain once, then waits for the run to end


def _load_tokens() -> list[tuple[str, str]]:
    """(user id, token) pairs from the run's tokens file; empty: mint them with the gateway's dev endpoint."""
    path = RUN.get("tokens_file")
    if not path:
        return []
    pairs = []
    for line in Path(path).read_text().splitlines():
        user, _, token = line.partition(" ")
        if token:
            pairs.append((user, token))
    return pairs


TOKENS = _load_tokens()
_next_user = itertools.count()


OUTCOMES = Outcomes(RUN_DIR)


def _write_outcomes(environment: Environment, **_kwargs: Any) -> None:
    OUTCOMES.write()


events.quitting.add_listener(_write_outcomes)  # type: ignore[no-untyped-call]


def code_of(resp: Any) -> str:
    """The problem+json `code` of an answer; TRANSPORT when none came, HTTP_<status> when it has no code."""
    status = int(resp.status_code or 0)
    if status == 0:
        return "TRANSPORT"
    if 200 <= status < 300:
        return str(status)
    try:
        body = resp.json()
    except Exception:  # not JSON (a proxy's HTML page, a cut-off body): the status says enough
        body = None
    if isinstance(body, dict) and body.get("code"):
        return str(body["code"])
    return f"HTTP_{status}"


class ChainUser(FastHttpUser):
    """Common plumbing: identity, the run's sale, calls that record their code."""

    abstract = True
    host = TARGETS.url("flashsale", "")
    # Long polls wait up to ORDER_WAIT_SECONDS on the server; keep a margin.
    network_timeout = 30.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        """Take the next shopper identity; its replica and its fake client address follow from it."""
        n = next(_next_user)
        self.index = n
        if TOKENS:
            self.user_id, token = TOKENS[n % len(TOKENS)]
        else:
            self.user_id, token = f"lt-dev-{uuid.uuid4().hex[:10]}", self._dev_token()
        # Each shopper its own client address (RFC 2544 benchmark range), for a gateway that trusts one proxy hop.
        ip = f"198.18.{(n >> 8) & 0xFF}.{n & 0xFF}"
        self.headers = {"authorization": f"Bearer {token}", "x-forwarded-for": ip}
        self.sale_id = int(RUN["sale_id"]) if RUN.get("sale_id") else 0

    def _dev_token(self) -> str:
        """A token from the gateway's dev endpoint (GATEWAY_DEV_TOKENS=true), when no tokens file is given."""
        base = TARGETS.bases["flashsale"][0].rsplit("/api/", 1)[0]
        resp = self.client.post(f"{base}/api/auth/token", json={"user_id": f"lt-dev-{self.index}"}, name="dev token")
        return str(resp.json()["access_token"])

    def call(
        self,
        method: str,
        service: str,
        path: str,
        name: str,
        *,
        body: Any = None,
        key: str | None = None,
        params: str = "",
    ) -> tuple[str, Any]:
        """One request: (code, parsed JSON body or None). Failures in Locust's stats are named by code."""
        headers = dict(self.headers)
        if key is not None:
            headers["idempotency-key"] = key
        url = TARGETS.url(service, path, self.index) + params
        with self.client.request(method, url, name=name, json=body, headers=headers, catch_response=True) as resp:
            code = code_of(resp)
            OUTCOMES.count(name, code)
            answer: Any = None
            if 200 <= int(resp.status_code or 0) < 300:
                try:
                    answer = resp.json()
                except ValueError:
                    answer = None
                resp.success()
            elif code in BUSINESS_CODES:
                resp.success()
            else:
                resp.failure(code)
        return code, answer

    def sale_path(self) -> str:
        """The sale's storefront path."""
        return f"/sales/{self.sale_id}"

    def find_sale(self) -> None:
        """List the live sales; without a run file, pick the first live or scheduled one."""
        _code, sales = self.call("GET", "flashsale", "/sales", "GET /sales")
        if not self.sale_id and isinstance(sales, list) and sales:
            self.sale_id = int(sales[0]["id"])

    def view_sale(self) -> dict[str, Any] | None:
        """The sale's live detail: state, remaining, countdown."""
        if not self.sale_id:
            return None
        _code, view = self.call("GET", "flashsale", self.sale_path(), "GET /sales/{id}")
        return view if isinstance(view, dict) else None


class Shopper(ChainUser):
    """Walks the whole chain once, then browses and sometimes tries to buy again."""

    weight = 4
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        """The journey, logged when it ends; in the journeys shape the shopper then waits for the run to end."""
        super().on_start()
        journey = Journey(user_id=self.user_id, started_at=time.time())
        try:
            self.walk(journey)
        finally:
            journey.ended_at = time.time()
            OUTCOMES.walked(journey)
        if ONE_JOURNEY:
            time.sleep(LINGER_SECONDS)  # the shape stops the run (and so this wait) once every shopper walked

    def walk(self, journey: Journey) -> None:
        """Sales, coupon, countdown, purchase, order, quote, payment; `journey` records what each step answered."""
        self.find_sale()
        if not self.sale_id:
            return
        if random.random() < COUPON_SHARE:
            journey.claim_key, journey.claim_code, journey.coupon_id = self.claim_coupon()
            journey.claimed_at = time.time()
        view = self.wait_for_start()
        journey.purchase_at = time.time()
        journey.purchase_code, answer = self.purchase(journey.coupon_id)
        journey.answered_at = time.time()
        if answer is None or view is None:
            return
        journey.reservation_id, journey.quantity = str(answer["reservation_id"]), int(answer["quantity"])
        journey.order_code, order = self.wait_for_order(journey.reservation_id)
        if order is None:
            return
        journey.order_id, journey.ordered_at = str(order["id"]), time.time()
        journey.order_created_at, journey.order_deadline_at = order.get("created_at"), order.get("deadline_at")
        if journey.coupon_id:
            self.quote(view, journey.quantity, journey.coupon_id)
        journey.pays = random.random() < PAY_SHARE
        if journey.pays:
            journey.pay_code, paid, journey.pricing_waits = self.pay(order)
            if paid is not None:
                journey.payment_provider, journey.paid_at = paid.get("payment_provider"), time.time()

    def claim_coupon(self) -> tuple[str | None, str | None, str | None]:
        """Claim one coupon of the run's template: (Idempotency-Key, answer's code, coupon id when claimed)."""
        template = RUN.get("coupon_template_id")
        if not template:
            return None, None, None
        key = uuid.uuid4().hex
        code, claimed = self.call(
            "POST", "coupon", f"/templates/{template}/claim", "POST /templates/{id}/claim", key=key
        )
        return key, code, (str(claimed["coupon_id"]) if code == "201" and claimed else None)

    def wait_for_start(self) -> dict[str, Any] | None:
        """Poll the sale's countdown until it starts (at most ~2 minutes)."""
        view = None
        for _ in range(240):
            view = self.view_sale()
            if view is None or view.get("state") in ("live", "ended") or float(view["seconds_to_start"]) <= 0:
                return view
            time.sleep(min(1.0, max(0.05, float(view["seconds_to_start"]))))
        return view

    def purchase(self, coupon: str | None) -> tuple[str, dict[str, Any] | None]:
        """Buy one unit; retry the same Idempotency-Key when the answer is unknown or "try again".

        Returns the last answer's code, and the 202's body when accepted."""
        key = uuid.uuid4().hex
        body: dict[str, Any] = {"quantity": 1}
        if coupon:
            body["coupon_ids"] = [coupon]
        code = "TRANSPORT"
        for attempt in range(4):
            code, answer = self.call("POST", "flashsale", f"{self.sale_path()}/purchase", PURCHASE, body=body, key=key)
            if code == "202" and answer:
                OUTCOMES.accept(answer, self.user_id)
                return code, answer
            if code not in RETRY_SAME_KEY:
                break
            time.sleep(0.25 * 2**attempt + random.random() * 0.25)
        return code, None

    def wait_for_order(self, rid: str) -> tuple[str, dict[str, Any] | None]:
        """Long-poll the order made from the reservation: the last answer's code, and the order when found."""
        code = "ORDER_NOT_FOUND"
        for _ in range(ORDER_POLLS):
            code, order = self.call(
                "GET",
                "order",
                f"/orders/by-reservation/{rid}",
                "GET /orders/by-reservation/{rid}",
                params=f"?wait={ORDER_WAIT_SECONDS}",
            )
            if code == "200" and isinstance(order, dict):
                return code, order
            if code != "ORDER_NOT_FOUND":
                time.sleep(1.0)  # an error, not a wait: do not hammer
        return code, None

    def quote(self, view: dict[str, Any], quantity: int, coupon: str) -> None:
        """Preview the price with the coupon applied."""
        line = {"sku": view["sku"], "sale_id": self.sale_id, "unit_price": int(view["price"]), "quantity": quantity}
        self.call("POST", "coupon", "/quote", "POST /quote", body={"lines": [line], "coupon_ids": [coupon]})

    def pay(self, order: dict[str, Any]) -> tuple[str, dict[str, Any] | None, int]:
        """Pay; one Idempotency-Key for every retry, so nobody is charged twice.

        Returns the last answer's code, the paid order when it was paid, and how often the order was still
        being priced with its coupons."""
        key = uuid.uuid4().hex
        code, pricing = "TRANSPORT", 0
        for _ in range(20):
            code, paid = self.call("POST", "order", f"/orders/{order['id']}/pay", "POST /orders/{id}/pay", key=key)
            if code == "ORDER_PRICING_PENDING":
                pricing += 1
            if code == "ORDER_PRICING_PENDING" or code in RETRY_SAME_KEY:
                time.sleep(0.5)
                continue
            return code, (paid if code == "200" and isinstance(paid, dict) else None), pricing
        return code, None, pricing

    @task(5)
    def poll_sale(self) -> None:
        """Watch the remaining stock."""
        self.view_sale()

    @task(2)
    def list_sales(self) -> None:
        """Back to the list."""
        self.find_sale()

    @task(1)
    def my_orders(self) -> None:
        """Check my orders."""
        self.call("GET", "order", "/orders", "GET /orders", params="?limit=10")

    @task(1)
    def buy_again(self) -> None:
        """Try once more (the per-user limit or sold out answers; a restock would sell)."""
        if self.sale_id:
            _code, answer = self.purchase(None)
            if answer is not None:
                self.wait_for_order(str(answer["reservation_id"]))


class WindowShopper(ChainUser):
    """Only looks: lists the sales and polls one's countdown and stock."""

    weight = 1
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        """Find the sale."""
        super().on_start()
        self.find_sale()

    @task(4)
    def poll_sale(self) -> None:
        """Refresh the sale page."""
        self.view_sale()

    @task(1)
    def list_sales(self) -> None:
        """Refresh the list."""
        self.find_sale()


def _stages() -> list[shapes.Stage]:
    """The stages LOADTEST_SHAPE asks for, in multiples of LOADTEST_NORMAL_PEAK (journeys: LOADTEST_USERS)."""
    name = SHAPE
    peak = int(_env_float("LOADTEST_NORMAL_PEAK", 50))
    multiple = _env_float("LOADTEST_MULTIPLE", 5)
    if name == "flash":
        starts = datetime.fromisoformat(RUN["starts_at"]).timestamp() if RUN.get("starts_at") else time.time() + 10
        hold = _env_float("LOADTEST_HOLD", 60)
        return shapes.flash_crowd(peak=peak, multiple=multiple, sale_starts_in=starts - time.time(), hold=hold)
    if name == "steps":
        return shapes.steps(peak=peak, step_seconds=_env_float("LOADTEST_STEP_SECONDS", 30))
    if name == "soak":
        return shapes.soak(peak=peak, multiple=multiple, seconds=_env_float("LOADTEST_SOAK_SECONDS", 1800))
    if name == "smoke":
        return shapes.smoke(users=peak, seconds=_env_float("LOADTEST_HOLD", 20))
    if name == "journeys":
        users, rate = int(_env_float("LOADTEST_USERS", 100)), _env_float("LOADTEST_SPAWN_RATE", 100)
        return shapes.journeys(users=users, spawn_rate=rate, seconds=_env_float("LOADTEST_HOLD", 120))
    if name:
        raise ValueError(f"LOADTEST_SHAPE must be flash, steps, soak, smoke or journeys, not {name!r}")
    return []


STAGES = _stages()

if STAGES:

    class ConfiguredShape(LoadTestShape):
        """The stages of LOADTEST_SHAPE; Locust calls tick() about once a second."""

        def tick(self) -> tuple[int, float] | tuple[int, float, list[type[User]]] | None:
            """(users, spawn rate) now, or None to stop; the journeys shape sends Shoppers only and stops as soon
            as every one of them has walked the chain."""
            stage = shapes.at(STAGES, self.get_run_time())  # type: ignore[no-untyped-call]
            if stage is None:
                return None
            if ONE_JOURNEY:
                return None if OUTCOMES.journeys >= stage.users else (stage.users, stage.spawn_rate, [Shopper])
            return stage.users, stage.spawn_rate

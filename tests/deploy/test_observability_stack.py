"""The local stack's Prometheus: `python -m deploy up` starts it (and Alertmanager) beside every replica, a small
sale through the gateway shows up in the recording rules as the orders and GMV the order service reports, and a
killed replica fires ReplicaDown, in Prometheus and in Alertmanager.

The stack runs on private Redis and PostgreSQL under a .stack/ of the test's own, on STACK_PORT_OFFSET (default
500) and free ports for Prometheus and Alertmanager, so it never meets a developer's stack or another test run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from deploy import observability, replicas
from deploy import state as stack_state
from deploy.topology import HOST, spec_named
from loadtest import seed
from loadtest.targets import gateway_targets
from tests.deploy.conftest import free_port

T = TypeVar("T")
RATE_WINDOW = 60.0  # seconds: the [1m] of the sale:*:rate1m recording rules
# rate() extrapolates past a series' first and last sample by at most 1.1 sample intervals each, and never below
# the samples' own increase: over n samples the recorded rate exceeds their increase by at most 2.2 / (n - 1).
EXTRAPOLATION = 2 * 1.1


@dataclass(frozen=True, slots=True)
class Stack:
    """The running stack: the gateway, Prometheus, Alertmanager and the launcher's records."""

    gateway: str
    prometheus: str
    alertmanager: str
    state: dict[str, Any]


def wait_for(what: str, check: Callable[[], T | None], timeout: float) -> T:
    """Poll until `check()` gives a value; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()) is not None:
            return found
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """`python -m deploy up --private` with monitoring, as `make up` runs it; everything stopped afterwards."""
    for program in ("prometheus", "prometheus-alertmanager"):
        if observability.binary((program, program.removeprefix("prometheus-"))) is None:
            pytest.fail(f"{program} is not on PATH: install Debian's prometheus and prometheus-alertmanager")
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"stack-obs-{uuid.uuid4().hex[:8]}"
    base.mkdir(mode=0o755)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "STACK_DIR": base / ".stack",
            "STATE_FILE": base / ".stack" / "state.json",
            "LOCK_FILE": base / ".stack" / "launcher.lock",
            "LOG_DIR": base / ".stack" / "logs",
            "DEFAULT_ENV_FILE": base / ".stack" / "backends.env",
        }.items():
            mp.setattr(stack_state, name, value)
        mp.setenv("STACK_PORT_OFFSET", os.environ.get("STACK_PORT_OFFSET") or "500")
        mp.setenv("STACK_PROMETHEUS_PORT", str(free_port()))
        mp.setenv("STACK_ALERTMANAGER_PORT", str(free_port()))
        mp.setenv("APP_ENV", "dev")  # the seeder's tokens signed as the stack's services expect
        args = argparse.Namespace(private=True, embedded=False)
        state: dict[str, Any] = {"processes": {}}
        try:
            state, _backends, _started = replicas.bring_up(args, monitoring=True)
            procs = state["processes"]
            yield Stack(
                gateway=procs["gateway-1"]["url"],
                prometheus=procs["prometheus"]["url"],
                alertmanager=procs["alertmanager"]["url"],
                state=state,
            )
        finally:
            stack_state.stop_recorded(stack_state.load_state())
            shutil.rmtree(base, ignore_errors=True)


def query(stack: Stack, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    """The result of an instant query through Prometheus's HTTP API."""
    params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
    answer = httpx.get(f"{stack.prometheus}/api/v1/query", params=params, timeout=10).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def reported(metric: str, sale_id: int) -> float:
    """The sum of a sale's counter over the order replicas, as their own /metrics report it."""
    pattern = re.compile(rf'^{metric}\{{[^}}]*sale_id="{sale_id}"[^}}]*\}} (\S+)$', re.MULTILINE)
    total = 0.0
    for _name, port in spec_named("order").replicas(int(os.environ["STACK_PORT_OFFSET"])):
        text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text
        total += sum(float(value) for value in pattern.findall(text))
    return total


def reporting_replicas(metric: str, sale_id: int) -> int:
    """How many order replicas report the sale's counter at all (a counter appears at its first increment)."""
    needle = f'sale_id="{sale_id}"'
    count = 0
    for _name, port in spec_named("order").replicas(int(os.environ["STACK_PORT_OFFSET"])):
        text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text
        count += any(line.startswith(metric + "{") and needle in line for line in text.splitlines())
    return count


class Shopper:
    """One buyer through the gateway: buy a unit, wait for its order, pay it."""

    def __init__(self, stack: Stack, sale_id: int, token: str) -> None:
        self.client = httpx.Client(base_url=stack.gateway, headers={"authorization": f"Bearer {token}"}, timeout=30)
        self.sale_id = sale_id

    def buy(self) -> dict[str, Any]:
        """A purchase of one unit (retried while the sale is about to go live); its order."""
        key = uuid.uuid4().hex

        def accepted() -> dict[str, Any] | None:
            path = f"/api/flashsale/sales/{self.sale_id}/purchase"
            resp = self.client.post(path, json={"quantity": 1}, headers={"idempotency-key": key})
            assert resp.status_code in (202, 423), resp.text
            return resp.json() if resp.status_code == 202 else None

        reservation = wait_for("the purchase accepted", accepted, 20)
        resp = self.client.get(f"/api/order/orders/by-reservation/{reservation['reservation_id']}?wait=10")
        assert resp.status_code == 200, resp.text
        order: dict[str, Any] = resp.json()
        return order

    def pay(self, order: dict[str, Any]) -> int:
        """Pay the order; its total in minor units."""
        key = uuid.uuid4().hex

        def paid() -> dict[str, Any] | None:
            resp = self.client.post(f"/api/order/orders/{order['id']}/pay", headers={"idempotency-key": key})
            if resp.status_code == 409 and resp.json().get("code") == "ORDER_PRICING_PENDING":
                return None
            assert resp.status_code == 200, resp.text
            answer: dict[str, Any] = resp.json()
            return answer

        return int(wait_for("the order paid", paid, 20)["total"])


def prometheus_sum(stack: Stack, metric: str, sale_id: int) -> float | None:
    """The sale's counter summed over its series in Prometheus (None before the first scrape)."""
    result = query(stack, f'sum(order_{metric}{{sale_id="{sale_id}"}})')
    return float(result[0]["value"][1]) if result else None


def caught_up(stack: Stack, sale_id: int, metrics: tuple[str, ...]) -> Callable[[], bool | None]:
    """A check: Prometheus's last scrape of each counter equals what the order replicas report now."""

    def check() -> bool | None:
        same = all(prometheus_sum(stack, m, sale_id) == reported(f"order_{m}", sale_id) for m in metrics)
        return True if same else None

    return check


@dataclass(frozen=True, slots=True)
class Window:
    """What rate() sees of a sale's counter over the rule's window."""

    increase: float  # last minus first sample of each series, summed
    most: float  # the most rate() may make of it over the window: each series' increase, extrapolated
    unseen: float  # first values of the series that appeared after the warm-up: counted, never an increase


def seen_window(stack: Stack, metric: str, sale_id: int, at: float, warmed_up: float) -> Window:
    """The sale's counter samples over the rate window, from Prometheus."""
    result = query(stack, f'order_{metric}{{sale_id="{sale_id}"}}[1m]', at)
    increases = [(float(s["values"][-1][1]) - float(s["values"][0][1]), len(s["values"])) for s in result]
    firsts = [(float(s["values"][0][0]), float(s["values"][0][1])) for s in result]
    return Window(
        increase=sum(increase for increase, _n in increases),
        # The rule was evaluated up to one scrape before `at`: it may have seen one sample fewer.
        most=sum(increase * (1 + EXTRAPOLATION / max(1, n - 2)) for increase, n in increases),
        unseen=sum(value for stamp, value in firsts if stamp > warmed_up),
    )


def recorded_rate(stack: Stack, rule: str, sale_id: int, at: float) -> float:
    """The recording rule's value for the sale."""
    result = query(stack, f'{rule}{{sale_id="{sale_id}"}}', at)
    assert len(result) == 1, result
    return float(result[0]["value"][1])


WARM_UP_ORDERS = 6
COUNTERS = ("sale_orders_created_total", "sale_orders_paid_total", "sale_gmv_paid_minor_total")


def replica_down_alerts(stack: Stack, pool: str) -> Callable[[], list[dict[str, Any]] | None]:
    """A check: the firing ReplicaDown alerts of a pool in Prometheus."""

    def check() -> list[dict[str, Any]] | None:
        alerts = httpx.get(f"{stack.prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        firing = [
            a
            for a in alerts
            if a["labels"]["alertname"] == "ReplicaDown" and a["labels"].get("pool") == pool and a["state"] == "firing"
        ]
        return firing or None

    return check


def test_a_sale_shows_in_the_rules_as_the_order_service_reports_it_and_a_killed_replica_fires_replica_down(
    stack: Stack,
) -> None:
    # A replica this sale never needs (no coupons) dies first: its alert's 30 s run while the sale is measured.
    assert replica_down_alerts(stack, "coupon")() is None, "no replica is down before the kill"
    os.kill(int(stack.state["processes"]["coupon-2"]["pid"]), signal.SIGKILL)
    targets = gateway_targets(stack.gateway)
    plan = seed.SaleSeed(quantity=30, limit=2, start_in=1, duration_minutes=10, users=20, coupons=0, title="Obs")
    run = seed.seed_sale(targets, Path(stack_state.STACK_DIR) / "run", plan)
    sale_id = int(run["sale_id"])
    shoppers = iter(Shopper(stack, sale_id, token) for _user, token in seed.read_tokens(Path(run["tokens_file"])))

    # Warm-up orders, so the order replicas count the sale before the measured window: a counter appears at its
    # first increment, and rate() reads a series' first sample as its baseline, never as an increase.
    for _warm_up in range(WARM_UP_ORDERS):
        shopper = next(shoppers)
        shopper.pay(shopper.buy())
        if min(reporting_replicas(f"order_{m}", sale_id) for m in COUNTERS) == 2:
            break
    wait_for("Prometheus scraping the first orders", caught_up(stack, sale_id, COUNTERS), 15)
    before = {m: reported(f"order_{m}", sale_id) for m in COUNTERS}
    warmed_up = time.time()

    # The measured sale: five orders, three of them paid.
    paid_total = 0
    for n in range(5):
        shopper = next(shoppers)
        order = shopper.buy()
        if n < 3:
            paid_total += shopper.pay(order)
    wait_for("Prometheus scraping the sale", caught_up(stack, sale_id, COUNTERS), 15)
    after = {m: reported(f"order_{m}", sale_id) for m in COUNTERS}
    assert after["sale_orders_created_total"] - before["sale_orders_created_total"] == 5
    assert after["sale_orders_paid_total"] - before["sale_orders_paid_total"] == 3
    assert after["sale_gmv_paid_minor_total"] - before["sale_gmv_paid_minor_total"] == paid_total == 3 * seed.PRICE

    time.sleep(2.5)  # one more rule evaluation (every 2 s): the rules' last value reads the final samples
    at = time.time()
    for metric, rule in (
        ("sale_orders_created_total", "sale:orders_created:rate1m"),
        ("sale_orders_paid_total", "sale:orders_paid:rate1m"),
        ("sale_gmv_paid_minor_total", "sale:gmv_paid_minor:rate1m"),
    ):
        window = seen_window(stack, metric, sale_id, at, warmed_up)
        # The window holds the measured sale (but for the first value of a replica's series that appeared in it)
        # and at most the warm-up orders before it.
        assert after[metric] - before[metric] - window.unseen <= window.increase <= after[metric], (metric, window)
        seen = recorded_rate(stack, rule, sale_id, at) * RATE_WINDOW
        assert window.increase <= seen <= window.most, (rule, seen, window)

    # The killed replica: the gateway's checks mark it down, ReplicaDown fires 30 s later and reaches Alertmanager.
    firing = wait_for("ReplicaDown firing in Prometheus", replica_down_alerts(stack, "coupon"), 45)
    assert [a["labels"]["severity"] for a in firing] == ["ticket"]
    assert firing[0]["annotations"]["runbook"] == "docs/observability.md#replicadown"

    def routed() -> list[dict[str, Any]] | None:
        alerts = httpx.get(f"{stack.alertmanager}/api/v2/alerts", params={"filter": 'alertname="ReplicaDown"'}).json()
        return [a for a in alerts if a["labels"].get("pool") == "coupon"] or None

    assert wait_for("ReplicaDown reaching Alertmanager", routed, 10)[0]["status"]["state"] == "active"

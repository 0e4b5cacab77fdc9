"""CI's full-chain smoke: every service as a real process, a few Locust shoppers for ~15 s through the whole
chain (sales, coupon, countdown, purchase, order, quote, payment), then the checker; and the demo's crowd (the
same shoppers, each walking the chain once) on the same services.

The shoppers go through a real gateway process (LOADTEST_MODE=gateway), the way storefronts do; the checker and
the seeder use the same gateway for the admin APIs.

It runs the same commands an SRE runs (`python -m loadtest.seed`, `locust -f loadtest/locustfile.py`,
`python -m loadtest.checker`), as subprocesses: Locust patches the standard library with gevent, which must not
happen inside pytest.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from deploy.demo import crowd
from deploy.demo.coupons import discounts
from loadtest import checker, seed
from loadtest import targets as loadtest_targets
from services.common.migrate import upgrade
from tests.conftest import ROOT, PaySims, Processes, db_name_for, db_url_for, drop_database, redis_url_for

# A logical Redis database of this run's own (the suite's third), flushed here: sale ids restart at 1 in the
# fresh databases below, so an earlier module's keys of "sale 1" must not be there.
REDIS_URL = redis_url_for(2)
DATABASES = {"inventory": "inventory_lt", "order": "orders_lt", "coupon": "coupons_lt", "flashsale": "flashsale_lt"}
SHOPPERS = 8
SECONDS = 15


@pytest.fixture(scope="module")
async def services(paysim: PaySims) -> AsyncIterator[dict[str, str]]:
    """inventory, coupon, order, flashsale (one replica each) and the gateway in front: name -> base URL."""
    for name in DATABASES.values():
        await drop_database(db_name_for(name))
    for service, name in DATABASES.items():
        await asyncio.to_thread(upgrade, service, db_url_for(name))
    redis = Redis.from_url(REDIS_URL)
    await redis.flushdb()
    await redis.aclose()
    procs = Processes()
    common = {"REDIS_URL": REDIS_URL}

    def start(app: str, env: dict[str, str]) -> str:
        return procs.start(app, {**common, **env})

    try:
        inventory = await asyncio.to_thread(
            start, "services.inventory.main:app", {"INVENTORY_DATABASE_URL": db_url_for("inventory_lt")}
        )
        coupon = await asyncio.to_thread(
            start, "services.coupon.main:app", {"COUPON_DATABASE_URL": db_url_for("coupons_lt")}
        )
        order = await asyncio.to_thread(
            start,
            "services.order.main:app",
            {
                "ORDER_DATABASE_URL": db_url_for("orders_lt"),
                "ORDER_PAYSIM_PRIMARY_URL": paysim.primary,
                "ORDER_PAYSIM_BACKUP_URL": paysim.backup,
                "ORDER_COUPON_URL": coupon,
                "ORDER_PAYMENT_DEADLINE_SECONDS": "5",  # the shoppers who never pay: their orders expire in the run
                "ORDER_SWEEPER_INTERVAL_SECONDS": "0.2",
                "ORDER_STREAM_DISCOVERY_SECONDS": "0.2",
            },
        )
        flashsale = await asyncio.to_thread(
            start,
            "services.flashsale.main:app",
            {
                "FLASHSALE_DATABASE_URL": db_url_for("flashsale_lt"),
                "FLASHSALE_INVENTORY_URL": inventory,
                "FLASHSALE_ORDER_URL": order,
                "FLASHSALE_SCHEDULER_INTERVAL_SECONDS": "0.1",
            },
        )
        gateway = await asyncio.to_thread(
            start,
            "gateway.main:app",
            {
                **{
                    f"GATEWAY_{name.upper()}_URLS": url
                    for name, url in (
                        ("inventory", inventory),
                        ("coupon", coupon),
                        ("order", order),
                        ("flashsale", flashsale),
                    )
                },
                "GATEWAY_DEV_TOKENS": "true",
            },
        )
        yield {"inventory": inventory, "coupon": coupon, "order": order, "flashsale": flashsale, "gateway": gateway}
    finally:
        await asyncio.to_thread(procs.stop_all)


def run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run one of the load test's commands from the repo root."""
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _aggregated(stats_csv: Path) -> dict[str, str]:
    with stats_csv.open() as fh:
        return next(row for row in csv.DictReader(fh) if row["Name"] == "Aggregated")


async def test_a_short_full_chain_run_passes_the_checker(services: dict[str, str], tmp_path: Path) -> None:
    env = {
        **os.environ,
        "APP_ENV": "test",
        "REDIS_URL": REDIS_URL,
        "LOADTEST_MODE": "gateway",
        "LOADTEST_GATEWAY": services["gateway"],
        "LOADTEST_RUN_DIR": str(tmp_path),
        "LOADTEST_SHAPE": "smoke",
        "LOADTEST_NORMAL_PEAK": str(SHOPPERS),
        "LOADTEST_HOLD": str(SECONDS),
        "LOADTEST_PAY_SHARE": "0.6",
        "LOADTEST_COUPON_SHARE": "0.5",
    }
    seed = [sys.executable, "-m", "loadtest.seed", "--run-dir", str(tmp_path), "--quantity", "10", "--start-in", "3"]
    done = await asyncio.to_thread(run, [*seed, "--users", str(SHOPPERS), "--coupons", "5"], env, 60)
    assert done.returncode == 0, done.stderr

    locust = [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless", "--only-summary"]
    locust += ["--csv", str(tmp_path / "locust"), "--html", str(tmp_path / "locust.html")]
    done = await asyncio.to_thread(run, locust, env, SECONDS + 40)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    checker = [sys.executable, "-m", "loadtest.checker", "--run", str(tmp_path), "--wait", "20"]
    done = await asyncio.to_thread(run, checker, env, 60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all held" in done.stdout

    # Requests were served: the shoppers bought, got orders and paid; no request failed.
    total = _aggregated(tmp_path / "locust_stats.csv")
    assert int(total["Request Count"]) > 50
    assert int(total["Failure Count"]) == 0, (tmp_path / "locust_failures.csv").read_text()
    outcomes = json.loads((tmp_path / "outcomes.json").read_text())
    purchases = outcomes["codes"]["POST /sales/{id}/purchase"]
    assert purchases.get("202", 0) >= 1
    assert outcomes["codes"]["GET /orders/by-reservation/{rid}"].get("200", 0) >= 1
    assert outcomes["codes"].get("POST /orders/{id}/pay", {}).get("200", 0) >= 1

    # ...and all of it went through the gateway: its own count of proxied purchases answered 202.
    async with httpx.AsyncClient(base_url=services["gateway"]) as client:
        metrics = (await client.get("/metrics")).text
    proxied = [
        line
        for line in metrics.splitlines()
        if line.startswith("gateway_requests_total{")
        and 'route="flashsale.purchase"' in line
        and 'status="202"' in line
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in proxied) >= purchases["202"]


async def test_the_demo_crowd_walks_the_chain_once_per_shopper_and_the_checker_holds_every_202(
    services: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make demo`'s crowd: the same locustfile in the journeys shape, read back the way the demo's summary reads it."""
    monkeypatch.setenv("APP_ENV", "test")  # the seeder's and the checker's tokens, signed as the services expect
    targets = loadtest_targets.gateway_targets(services["gateway"])
    plan = seed.SaleSeed(quantity=5, limit=2, start_in=2, duration_minutes=10, users=SHOPPERS, coupons=3)
    run = await asyncio.to_thread(seed.seed_sale, targets, tmp_path, plan, redis_url=REDIS_URL)
    sale_id = int(run["sale_id"])
    shoppers = crowd.CrowdPlan(users=SHOPPERS, spawn_rate=SHOPPERS, coupon_share=1.0, pay_share=1.0, seconds=120)
    started = time.monotonic()
    walked = await asyncio.to_thread(crowd.run_crowd, tmp_path, targets, shoppers, run)
    assert time.monotonic() - started < shoppers.seconds, "the run ends once every shopper walked, not at its bound"

    # Each shopper walked the chain once; more shoppers than units and coupons: sold out, coupons all claimed.
    assert len(walked.journeys) == len({j.user_id for j in walked.journeys}) == SHOPPERS
    burst, orders, claims = walked.burst, walked.orders, walked.claims
    assert (burst.accepted, burst.units) == (5, 5) and set(burst.rejections) <= {"SOLD_OUT"}
    assert claims is not None and (claims.claimers, len(claims.coupons)) == (SHOPPERS, 3)
    assert set(orders.orders) == set(burst.reservations), "every shopper told 202 got its order"
    assert len(orders.paid) == 5 and not orders.pay_failures

    admin = checker.Admin(targets, checker.admin_token())
    redis = SyncRedis.from_url(REDIS_URL)
    try:
        acknowledged = checker.read_acknowledged(tmp_path / "accepted.jsonl", {sale_id})
        findings, facts = await asyncio.to_thread(checker.check_sales, admin, redis, [sale_id], acknowledged, 20)
    finally:
        admin.close()
        redis.close()
    assert all(f.ok for f in findings), [f for f in findings if not f.ok]
    assert set(facts[sale_id].acknowledged) == set(burst.reservations)
    by_reservation = {str(o["reservation_id"]): o for o in facts[sale_id].orders}
    assert all(by_reservation[rid]["state"] == "paid" for rid in burst.reservations)
    for rid, coupon in burst.coupon_of.items():  # a purchase that named a coupon: its order was priced with it
        assert [d["coupon_id"] for d in discounts(by_reservation[rid])] == [coupon]

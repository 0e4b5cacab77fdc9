"""What one pay costs the order process (`make bench-pay`): CPU, transactions, and its time at a fixed load.

Starts one paysim and one order process as the stack runs them (uvicorn, uvloop, the coalescing protocol), on a
fresh database `orders_bench_pay` (DATABASE_URL's server) and REDIS_URL's logical DB 5. Creates the orders with
the order service's own code, pays a warm-up round, then pays --pays orders at --concurrency in flight over
keep-alive connections and prints: pays/s, the client's p50/p99, the pay route's p50/p99 and its steps as the
order process timed them (its /metrics), the order process's CPU per pay (/proc), and the database's
transactions per pay (pg_stat_database). The order process's background jobs run once an hour here, so the
CPU and the transactions are the pays' own. A pay on a busy shared machine waits for CPU; these costs are what
it asks for, which the machine's other load does not change much.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from loadtest.server_metrics import difference, parse
from services.common.auth import issue_token
from services.common.migrate import upgrade
from services.common.resources import open_engine, open_redis, session_factory
from services.order.config import OrderSettings
from services.order.payments import PaymentRouter
from services.order.service import OrderService

ROOT = Path(__file__).resolve().parent.parent

DB = "orders_bench_pay"
QUIET_JOBS = {  # once an hour, at start: the CPU and the transactions measured are the pays' own
    f"ORDER_{name}": "3600"
    for name in (
        "RELAY_INTERVAL_SECONDS",
        "SWEEPER_INTERVAL_SECONDS",
        "PRICING_RETRY_INTERVAL_SECONDS",
        "CLAIM_CHECK_INTERVAL_SECONDS",
        "REFUND_INTERVAL_SECONDS",
        "DUPLICATE_CHECK_INTERVAL_SECONDS",
        "STREAM_DISCOVERY_SECONDS",
    )
}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(app: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """One uvicorn process as the launcher runs it; (process, base URL) once it answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--no-access-log", "--loop", "uvloop"]
    cmd += ["--http", "services.common.server:CoalescingHttpProtocol", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "APP_ENV": "dev", **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{app} did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def transactions(dsn: str) -> int:
    """Commits and rollbacks of the bench database so far."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", DB)
        return int(row[0]) if row else 0
    finally:
        await conn.close()


async def scrape(url: str) -> dict[str, Any]:
    """The order process's pay histograms and CPU, from its /metrics."""
    async with httpx.AsyncClient(timeout=10) as client:
        return parse([(await client.get(f"{url}/metrics")).text])


async def create_orders(service: OrderService, count: int, tag: str) -> list[tuple[str, str]]:
    """`count` unpaid orders of distinct buyers: (order id, buyer)."""
    events = [
        {"reservation_id": f"{tag}-{n}", "user_id": f"payer-{tag}-{n}", "sale_id": 1, "sku": "SKU-PAY", "quantity": 1}
        for n in range(count)
    ]
    for event in events:
        event["unit_price"] = 1_000
    await service.creation.create_orders(events)
    async with service.sessions() as session:
        rows = await session.execute(
            text("SELECT id, user_id FROM orders WHERE reservation_id LIKE :t"), {"t": f"{tag}-%"}
        )
        return [(str(r[0]), str(r[1])) for r in rows]


async def pay_all(
    url: str, settings: OrderSettings, orders: list[tuple[str, str]], concurrency: int
) -> tuple[list[float], int, int]:
    """Pay every order, `concurrency` at a time; (client latencies in ms, answers not 200, resent requests).

    A request whose connection broke is sent again with its Idempotency-Key, as a storefront would.
    """
    queue = [
        (
            order_id,
            {"authorization": f"Bearer {issue_token(settings, user, ['customer'])}", "idempotency-key": order_id},
        )
        for order_id, user in orders
    ]
    latencies: list[float] = []
    failed = resent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal failed, resent
            while queue:
                order_id, headers = queue.pop()
                started = time.perf_counter()
                for attempt in range(3):
                    try:
                        resp = await client.post(f"/orders/{order_id}/pay", headers=headers)
                        break
                    except httpx.TransportError:
                        if attempt == 2:
                            raise
                        resent += 1
                latencies.append((time.perf_counter() - started) * 1000)
                failed += resp.status_code != 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, failed, resent


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(pays: int, concurrency: int, warmup: int) -> int:
    """Set up, warm up, measure, print; the exit code."""
    server = os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    db_url = make_url(server).set(database=DB).render_as_string(hide_password=False)
    dsn = make_url(server).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    await conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    await conn.close()
    await asyncio.to_thread(upgrade, "order", db_url)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/5"
    paysim, paysim_url = await asyncio.to_thread(start, "services.paysim.main:app", {"PAYSIM_NAME": "primary"})
    env = {
        "ORDER_DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "ORDER_PAYSIM_PRIMARY_URL": paysim_url,
        "ORDER_PAYSIM_BACKUP_URL": paysim_url,
        "ORDER_PURCHASE_STREAM_REGISTRY": "bench:pay:no-streams",
        "ORDER_EVENTS_STREAM": "{bench:pay}:order-events",  # tagged: its relay marker beside it
        **QUIET_JOBS,
    }
    order, order_url = await asyncio.to_thread(start, "services.order.main:app", env)
    settings = OrderSettings(env="dev", database_url=db_url, redis_url=redis_url, db_pool_size=2)
    engine = open_engine(settings)
    redis = open_redis(settings)
    payments = PaymentRouter(primary_url=paysim_url, backup_url=paysim_url)
    service = OrderService(settings=settings, redis=redis, sessions=session_factory(engine), payments=payments)
    try:
        await pay_all(order_url, settings, await create_orders(service, warmup, "warm"), concurrency)
        orders = await create_orders(service, pays, "bench")
        before = (cpu_seconds(order.pid), await transactions(dsn), await scrape(order_url))
        started = time.perf_counter()
        latencies, failed, resent = await pay_all(order_url, settings, orders, concurrency)
        elapsed = time.perf_counter() - started
        after = (cpu_seconds(order.pid), await transactions(dsn), await scrape(order_url))
    finally:
        await payments.aclose()
        await redis.aclose()
        await engine.dispose()
        for proc in (order, paysim):
            proc.terminate()
            proc.wait(timeout=15)
    report(pays, concurrency, elapsed, latencies, (failed, resent), before, after)
    return 0 if failed == 0 else 1


def report(
    pays: int,
    concurrency: int,
    elapsed: float,
    latencies: list[float],
    answers: tuple[int, int],
    before: tuple[float, int, dict[str, Any]],
    after: tuple[float, int, dict[str, Any]],
) -> None:
    """Print the figures."""
    server = difference(before[2], after[2])["series"]
    failed, resent = answers
    print(f"{pays} pays at {concurrency} in flight: {pays / elapsed:,.0f} pays/s, {failed} not 200, {resent} resent")
    print(f"client: p50 {pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms")
    print(f"order process CPU per pay: {1000 * (after[0] - before[0]) / pays:.2f} ms")
    print(f"database transactions per pay: {(after[1] - before[1]) / pays:.2f}")
    print("as the order process timed it (bucket estimates):")
    for name, s in server.items():
        if name.startswith("pay"):
            figures = f"mean {s['mean_ms']:>7.1f} ms, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms"
            print(f"  {name:<40} n={s['count']:<6} {figures}")
    lag = server.get("event-loop lag (50 ms timer)")
    if lag:
        print(f"  event-loop lag: p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms")


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pays", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    return asyncio.run(run(args.pays, args.concurrency, args.warmup))


if __name__ == "__main__":
    raise SystemExit(main())

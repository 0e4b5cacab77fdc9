"""The performance table: one run, five rows side by side, with the ratios between them.

`make perf-table` runs `.venv/bin/python -m loadtest.bench.perf_table` with REDIS_URL and DATABASE_URL exported.

Rows (the wrk driver, the servers and the CPU accounting are loadtest/bench's shared modules):
1. Redis floor: redis-benchmark calling flashsale's purchase Lua script (EVALSHA, unique user / reservation /
   Idempotency-Key per call) on a warmed sale hash: what Redis alone decides per second;
2. trivial ceiling: `GET /healthz/live` of flashsale (2 replicas, SO_REUSEPORT), wrk;
3. purchases direct: `POST /sales/{id}/purchase` at flashsale, wrk;
4. purchases through the gateway: the same at `/api/flashsale/...` of the gateway (1 process) in front;
5. row-lock baseline: loadtest/bench/rowlock_app.py (2 replicas, same setup and token check) taking stock with
   `UPDATE ... SET stock = stock - n WHERE sale_id = $1 AND stock >= n` and recording the reservation in one
   PostgreSQL transaction: what many shops do.
Every wrk row uses the same threads, connections, duration and Lua script. Purchases are verified (202 answers =
reserved units = purchase events; for the baseline, 202 answers = reservation rows).
Aim: purchases through the gateway >= 10x the row-lock baseline. Writes loadtest/results/perf_table.json.
The Redis DB (`--redis-db`, default 7) is flushed and the databases `flashsale_bench_pt` / `rowlock_bench` recreated.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from redis import Redis
from sqlalchemy.engine import make_url

from loadtest.bench.backends import flush_redis, recreate_database, urls_from_environment
from loadtest.bench.cpu import CpuProbe
from loadtest.bench.errors import BenchError, ends_cleanly
from loadtest.bench.gateway import GATEWAY_PREFIX
from loadtest.bench.options import Options, add_load_arguments, check_load_arguments
from loadtest.bench.results import RESULTS_DIR, ROOT, table_lines, write_report
from loadtest.bench.rowlock_app import SCHEMA
from loadtest.bench.sale import Admin, admin_token, verify_purchases, write_tokens
from loadtest.bench.servers import GatewayServers, Servers, running
from loadtest.bench.wrk import WrkResult, ensure_wrk, run_wrk

PURCHASE_LUA = ROOT / "services" / "flashsale" / "lua" / "purchase.lua"
AIM_GATEWAY_OVER_ROWLOCK = 10.0
FLOOR_SALE_ID = 900_000_001
ROWLOCK_SALE_ID = 1
ROWLOCK_STOCK = 100_000_000


@dataclass(slots=True)
class Row:
    """One line of the table."""

    name: str
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    errors: int | None
    note: str


class RowLockServers(Servers):
    """The row-lock baseline, started like flashsale (two replicas on one SO_REUSEPORT port)."""

    APP = "loadtest.bench.rowlock_app:app"
    LOG_PREFIX = "rowlock"

    def _env(self, replica: str) -> dict[str, str]:
        env = super()._env(replica)
        env["ROWLOCK_DATABASE_URL"] = self.database_url
        return env


def redis_floor(redis_url: str, *, requests: int, clients: int) -> Row:
    """redis-benchmark running the purchase script on a warmed sale hash (EVALSHA, 6 keys)."""
    client = Redis.from_url(redis_url, decode_responses=True)
    tag = f"{{fs:{FLOOR_SALE_ID}}}"
    try:
        sha = str(client.script_load(PURCHASE_LUA.read_text()))
        client.hset(
            f"{tag}:sale",
            mapping={
                "state": "live",
                "starts": 0,
                "ends": 2**50,
                "remaining": 10**12,
                "limit": 10**9,
                "threshold": 0,
                "policy": "alert",
                "low_alerted": "0",
                "quantity": 10**12,
                "price": 1999,
                "sku": "FLOOR",
                "currency": "USD",
            },
        )
    finally:
        client.close()
    parts = urlsplit(redis_url)
    db = (parts.path or "/0").lstrip("/") or "0"
    keys = [f"{tag}:sale", f"{tag}:bought", f"{tag}:res", f"{tag}:idem:__rand_int__", f"{tag}:events", f"{tag}:alerts"]
    args = ["u__rand_int__", "1", "fp", "r__rand_int__", "60", str(FLOOR_SALE_ID), "floor", ""]
    cmd = ["redis-benchmark", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379), "--dbnum", db]
    cmd += ["-n", str(requests), "-c", str(clients), "-r", "1000000000", "--csv", "EVALSHA", sha, "6", *keys, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    rows = list(csv.reader(io.StringIO(done.stdout)))
    if done.returncode != 0 or len(rows) < 2:
        return Row(
            "Redis floor (purchase.lua, redis-benchmark)", None, None, None, None, f"failed: {done.stderr[:200]}"
        )
    head, values = rows[0], rows[-1]
    got = dict(zip(head, values, strict=False))
    return Row(
        "Redis floor (purchase.lua, redis-benchmark)",
        float(got["rps"]),
        float(got.get("p50_latency_ms", "nan")),
        float(got.get("p99_latency_ms", "nan")),
        0,
        f"-c {clients} -n {requests:,}, no pipelining",
    )


def wrk_row(name: str, result: WrkResult, note: str) -> Row:
    """A table row from a wrk run."""
    return Row(name, result.rps, result.p50_ms, result.p99_ms, result.errors, note)


async def _prepare_rowlock(url: str) -> None:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        await conn.execute("TRUNCATE rowlock_stock, rowlock_reservations")
        await conn.execute("INSERT INTO rowlock_stock VALUES ($1, $2)", ROWLOCK_SALE_ID, ROWLOCK_STOCK)
    finally:
        await conn.close()


async def _rowlock_rows(url: str) -> int:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM rowlock_reservations"))
    finally:
        await conn.close()


def flashsale_rows(opts: Options, wrk: str, redis_url: str, fs_db: str, tokens: Path, tag: str) -> list[Row]:
    """The trivial ceiling and the purchases, direct and through one gateway process, on one flashsale setup."""
    rows = []
    flashsale = Servers("reuseport", redis_url=redis_url, database_url=fs_db, user_rate=opts.user_rate)
    with running(flashsale):
        admin = Admin(flashsale.base_url, admin_token())
        probe = CpuProbe(flashsale.pids(), redis_url)

        def drive(url: str, endpoint: str, seconds: int, args: list[str]) -> WrkResult:
            return run_wrk(wrk, url, endpoint=endpoint, seconds=seconds, opts=opts, script_args=args, cpu_probe=probe)

        def purchase(url: str, prefix: str, label: str, seconds: int) -> tuple[WrkResult, str]:
            sale_id = admin.seed_sale(f"{tag}-{label}")
            result = drive(url, "purchase", seconds, [str(sale_id), str(tokens), f"{tag}{label}", prefix])
            check = verify_purchases(admin, redis_url, sale_id, result)
            return result, ("verified" if check.ok else check.note)

        try:
            print("[trivial] warm-up and measure", flush=True)
            drive(flashsale.base_url, "trivial", opts.warmup, [])
            trivial = drive(flashsale.base_url, "trivial", opts.duration, [])
            rows.append(wrk_row("trivial endpoint (GET /healthz/live)", trivial, "flashsale, 2 replicas"))
            print("[direct] warm-up and measure", flush=True)
            purchase(flashsale.base_url, "", "dw", opts.warmup)
            direct, note = purchase(flashsale.base_url, "", "dm", opts.duration)
            rows.append(wrk_row("purchases direct to flashsale", direct, note))
            print("[gateway] warm-up and measure", flush=True)
            # One gateway process, as the gateway benchmark runs it by default (why: loadtest/bench/gateway.py).
            gateway = GatewayServers("single", redis_url=redis_url, flashsale_url=flashsale.base_url)
            try:
                with running(gateway):
                    purchase(gateway.base_url, GATEWAY_PREFIX, "gw", opts.warmup)
                    through, note = purchase(gateway.base_url, GATEWAY_PREFIX, "gm", opts.duration)
                    rows.append(wrk_row("purchases through the gateway", through, note + ", 1 gateway process"))
            except BenchError as exc:
                rows.append(Row("purchases through the gateway", None, None, None, None, f"failed: {str(exc)[:160]}"))
        finally:
            admin.close()
    return rows


def rowlock_row(opts: Options, wrk: str, redis_url: str, rowlock_db: str, tokens: Path, tag: str) -> Row:
    """The row-lock baseline, verified against the reservation rows its measured run added."""
    print("[row lock] warm-up and measure", flush=True)
    asyncio.run(_prepare_rowlock(rowlock_db))
    baseline = RowLockServers("reuseport", redis_url=redis_url, database_url=rowlock_db, user_rate=None)
    with running(baseline):
        probe = CpuProbe(baseline.pids(), redis_url)

        def drive(seconds: int, run_tag: str) -> WrkResult:
            args = [str(ROWLOCK_SALE_ID), str(tokens), run_tag]
            return run_wrk(
                wrk,
                baseline.base_url,
                endpoint="purchase",
                seconds=seconds,
                opts=opts,
                script_args=args,
                cpu_probe=probe,
            )

        drive(opts.warmup, f"{tag}rlw")
        time.sleep(1.0)  # requests wrk abandoned at the warm-up's stop still commit: not the measured run's rows
        before = asyncio.run(_rowlock_rows(rowlock_db))
        locked = drive(opts.duration, f"{tag}rl")
        recorded = asyncio.run(_rowlock_rows(rowlock_db)) - before
    extra = recorded - locked.status_202
    note = (
        "verified" if 0 <= extra <= locked.in_flight_at_stop else f"MISMATCH: 202s {locked.status_202}, rows {recorded}"
    )
    return wrk_row("row-lock baseline (UPDATE ... WHERE stock >= n)", locked, note + ", 2 replicas, PostgreSQL")


def measure(opts: Options, redis_url: str, fs_db: str, rowlock_db: str, tokens: Path, floor_n: int) -> list[Row]:
    """Every row, one after another on this machine."""
    wrk = ensure_wrk()
    rows = [redis_floor(redis_url, requests=floor_n, clients=opts.connections)]
    print(f"[floor] {rows[0].rps}", flush=True)
    tag = uuid.uuid4().hex[:8]
    rows += flashsale_rows(opts, wrk, redis_url, fs_db, tokens, tag)
    rows.append(rowlock_row(opts, wrk, redis_url, rowlock_db, tokens, tag))
    return rows


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b when both are known."""
    return a / b if a and b else None


def print_table(rows: list[Row], opts: Options) -> dict[str, float | None]:
    """The table and the ratios; returns the ratios."""
    header = ["row", "req/s", "p50 ms", "p99 ms", "errors", "note"]
    cells = [
        [
            r.name,
            f"{r.rps:,.0f}" if r.rps else "-",
            f"{r.p50_ms:.2f}" if r.p50_ms is not None else "-",
            f"{r.p99_ms:.2f}" if r.p99_ms is not None else "-",
            str(r.errors) if r.errors is not None else "-",
            r.note,
        ]
        for r in rows
    ]
    print()
    print(f"load: wrk -t{opts.threads} -c{opts.connections} -d{opts.duration}s per row, {opts.users:,} users")
    for line in table_lines(header, cells, numeric=range(1, 5)):
        print(line)
    by = {r.name.split(" (")[0]: r.rps for r in rows}
    floor, trivial = by.get("Redis floor"), by.get("trivial endpoint")
    direct, gateway = by.get("purchases direct to flashsale"), by.get("purchases through the gateway")
    rowlock = by.get("row-lock baseline")
    ratios = {
        "direct / Redis floor": ratio(direct, floor),
        "direct / trivial": ratio(direct, trivial),
        "gateway / direct": ratio(gateway, direct),
        "direct / row lock": ratio(direct, rowlock),
        "gateway / row lock": ratio(gateway, rowlock),
    }
    print()
    for name, value in ratios.items():
        print(f"{name:<22} {'-' if value is None else f'{value:.2f}x'}")
    aim = ratios["gateway / row lock"]
    verdict = "n/a (no gateway row)" if aim is None else ("PASS" if aim >= AIM_GATEWAY_OVER_ROWLOCK else "MISS")
    print(f"aim gateway >= {AIM_GATEWAY_OVER_ROWLOCK:.0f}x row lock: {verdict}")
    return ratios


def parse_args(argv: Sequence[str] | None) -> tuple[Options, int]:
    """The options; the defaults are what `make perf-table` runs."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_load_arguments(p, duration=10, warmup=4)
    p.add_argument("--floor-requests", type=int, default=200_000, help="redis-benchmark calls")
    p.add_argument("--redis-db", type=int, default=7, help="Redis logical DB of the run (flushed)")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "perf_table.json")
    a = p.parse_args(argv)
    check_load_arguments(p, a)
    opts = Options.from_arguments(a, database="flashsale_bench_pt", output=a.output)
    return opts, a.floor_requests


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table; 1 when a step failed."""
    opts, floor_n = parse_args(argv)
    load_before = os.getloadavg()
    with ends_cleanly("perf_table"):
        redis_url, fs_db = urls_from_environment(opts.redis_db, opts.database)
        _, rowlock_db = urls_from_environment(opts.redis_db, "flashsale_bench_rowlock")
        flush_redis(redis_url)
        recreate_database(fs_db, service="flashsale")
        recreate_database(rowlock_db)
        with tempfile.TemporaryDirectory(prefix="perf_table-") as tmp:
            tokens = Path(tmp) / "tokens.txt"
            print(f"minting {opts.users:,} customer tokens", flush=True)
            write_tokens(opts.users, tokens)
            rows = measure(opts, redis_url, fs_db, rowlock_db, tokens, floor_n)
    ratios = print_table(rows, opts)
    report: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "params": {"duration_s": opts.duration, "connections": opts.connections, "threads": opts.threads},
        "rows": [asdict(r) for r in rows],
        "ratios": ratios,
        "aim": {"gateway_over_rowlock": AIM_GATEWAY_OVER_ROWLOCK},
    }
    write_report(opts.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

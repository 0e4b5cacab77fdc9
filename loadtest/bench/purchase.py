"""Purchase benchmark: the purchase endpoint against a trivial endpoint of the same server, and accepted
purchases against the answers of a sold-out sale, in one run.

`make bench` runs `.venv/bin/python -m loadtest.bench.purchase` with REDIS_URL and DATABASE_URL exported.

What one run does:
1. recreates a dedicated database (`flashsale_bench`, migrated with `services.common.migrate`) and flushes
   logical DB 5 (`--redis-db`) of the Redis in REDIS_URL: only that DB is flushed;
2. starts the flashsale service with uvicorn (uvloop, httptools with one send() per answer, no access log) in
   the server setup below (loadtest/bench/servers.py);
3. mints 20,000 customer tokens and one admin token, and seeds each purchase run with its own sale through
   the admin API (10,000,000 units so it never sells out, per-user limit 1000, started now);
4. drives both endpoints with wrk on this machine, same threads and connections: a warm-up of each, then a
   measured run of `GET /healthz/live` (same middleware stack) and of `POST /sales/{id}/purchase`
   (`{"quantity":1}`, a unique Idempotency-Key per request, bearer tokens rotating over the 20,000 users);
5. checks that the purchases were real: answers 202 = the sale's `reserved` units (admin stats) = the
   length of its event stream `{fs:<id>}:events` (give or take requests wrk left in flight when it stopped);
6. the sold-out phase (loadtest/bench/sold_out.py): the same purchase request on a sale whose one unit was
   bought, a short warm-up then a measured run; every answer must be 409 SOLD_OUT and nothing sold;
7. prints req/s, p50, p99, errors and CPU of each, the purchase/trivial ratio and PASS/MISS against the aims
   (>= 2,000 purchases/s, purchase >= 0.5 x trivial), the sold-out answer's CPU per request next to an
   accepted purchase's, and writes loadtest/results/bench_purchase.json.

The per-user rate limit of the service (10/s, burst 20 per replica) is left as it is: 20,000 users at a
few thousand purchases/s means each user sends well under 1 request/s, so nobody is rate limited.

Server setup: two replicas (REPLICA_ID bench-1, bench-2) behind one port, each uvicorn process with its own
SO_REUSEPORT listening socket (passed with `--fd`); the kernel spreads wrk's connections over them by hash,
like a load balancer in front of two replicas, and wrk still sees one URL. The same setup serves both
endpoints. Chosen by measurement (`--compare-setups`, 5-6 rounds of wrk -t2 -c64 for 10 s, while other
test suites shared the machine, so the ranges are wide):
- 1 process: 1,150-1,300 purchases/s, 7,000-8,000 trivial req/s. It is CPU-bound on one core (one Python
  thread runs at a time) and leaves the other core mostly idle: wrk and Redis together need ~0.15 core.
- 2 replicas on SO_REUSEPORT: 1,700-2,750 purchases/s, 7,800-14,900 trivial req/s. The CPU the second
  process takes from wrk and Redis costs far less than the second core gives; p50 halves, p99 stays alike.
- `uvicorn --workers 2`: 2,090-2,430 purchases/s when both workers got connections, but the workers race to
  accept from one shared socket, and in 5 of 12 runs (4 of 6 trivial ones) one worker served nearly all
  the load (server CPU ~1 core, 6,400-8,400 trivial req/s): a lottery, not a setup. A REPLICA_ID in its
  environment would also give both workers one stream consumer name.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from loadtest.bench.backends import flush_redis, recreate_database, urls_from_environment
from loadtest.bench.cpu import CpuProbe
from loadtest.bench.errors import ends_cleanly
from loadtest.bench.options import Options, add_load_arguments, check_load_arguments
from loadtest.bench.results import RESULTS_DIR, report_header, table_lines, write_report
from loadtest.bench.sale import (
    PER_USER_LIMIT,
    SALE_QUANTITY,
    Admin,
    Verification,
    admin_token,
    verify_purchases,
    write_tokens,
)
from loadtest.bench.servers import Servers, running, stop_servers_on_sigterm
from loadtest.bench.sold_out import SoldOutCheck, comparison, print_comparison, seed_sold_out_sale, verify_sold_out
from loadtest.bench.wrk import WrkResult, ensure_wrk, run_wrk

SETUPS = ("single", "workers", "reuseport")
DEFAULT_SETUP = "reuseport"  # two replicas on one port; the module docstring says why
AIM_PURCHASES_PER_SECOND = 2000.0
AIM_RATIO = 0.5


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Read the options; the defaults are what `make bench` runs."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--setup", choices=SETUPS, default=DEFAULT_SETUP, help="server setup (default: %(default)s)")
    p.add_argument("--compare-setups", action="store_true", help="measure every server setup instead of one")
    add_load_arguments(p, duration=12, warmup=8)
    p.add_argument("--redis-db", type=int, default=5, help="Redis logical DB of the benchmark (flushed)")
    p.add_argument("--database", default="flashsale_bench", help="PostgreSQL database of the benchmark (recreated)")
    p.add_argument(
        "--user-rate",
        type=float,
        default=None,
        help="override FLASHSALE_USER_RATE_PER_SECOND (default: the service's own limit)",
    )
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "bench_purchase.json", help="JSON results file")
    p.add_argument("--strict", action="store_true", help="exit 2 when an aim is missed")
    p.add_argument("--rounds", type=int, default=1, help="measure this many times (setups interleaved)")
    a = p.parse_args(argv)
    check_load_arguments(p, a)
    if a.rounds < 1:
        p.error("need rounds >= 1")
    return Options.from_arguments(
        a,
        setup=a.setup,
        compare_setups=a.compare_setups,
        database=a.database,
        user_rate=a.user_rate,
        output=a.output,
        strict=a.strict,
        rounds=a.rounds,
    )


# ---------------------------------------------------------------------------- one measurement


@dataclass
class Measurement:
    """Both endpoints measured on one server setup."""

    setup: str
    trivial: WrkResult
    purchase: WrkResult
    verification: Verification
    warmup_verification: Verification | None
    sold_out: WrkResult | None = None
    sold_out_check: SoldOutCheck | None = None

    @property
    def ratio(self) -> float:
        """Purchase req/s over trivial req/s."""
        return self.purchase.rps / self.trivial.rps if self.trivial.rps else 0.0


def measure(
    setup: str,
    opts: Options,
    *,
    wrk: str,
    redis_url: str,
    database_url: str,
    tokens_file: Path,
    token: str,
) -> Measurement:
    """Start the setup, warm up both endpoints, measure trivial then purchase, verify, stop."""
    servers = Servers(setup, redis_url=redis_url, database_url=database_url, user_rate=opts.user_rate)
    with running(servers):
        admin = Admin(servers.base_url, token)
        try:
            probe = CpuProbe(servers.pids(), redis_url)
            run_tag = uuid.uuid4().hex[:8]

            def drive(endpoint: str, seconds: int, args: list[str]) -> WrkResult:
                return run_wrk(
                    wrk,
                    servers.base_url,
                    endpoint=endpoint,
                    seconds=seconds,
                    opts=opts,
                    script_args=args,
                    cpu_probe=probe,
                )

            def purchase(label: str, seconds: int) -> tuple[WrkResult, Verification]:
                sale_id = admin.seed_sale(f"{run_tag}-{label}")
                result = drive("purchase", seconds, [str(sale_id), str(tokens_file), f"{run_tag}{label}"])
                return result, verify_purchases(admin, redis_url, sale_id, result)

            warm_check = None
            if opts.warmup:
                print(f"[{setup}] warm-up {opts.warmup}s each (fills the token cache and connection pools)", flush=True)
                drive("trivial", opts.warmup, [])
                _, warm_check = purchase("w", opts.warmup)
            print(f"[{setup}] measuring {opts.duration}s each: trivial, then purchase, then sold out", flush=True)
            trivial_result = drive("trivial", opts.duration, [])
            purchase_result, check = purchase("m", opts.duration)
            sold_out_sale = seed_sold_out_sale(admin, servers.base_url, tokens_file, f"{run_tag}-s")
            if opts.warmup:
                drive("purchase", min(opts.warmup, 3), [str(sold_out_sale), str(tokens_file), f"{run_tag}sw"])
            sold_out_result = drive("purchase", opts.duration, [str(sold_out_sale), str(tokens_file), f"{run_tag}s"])
            time.sleep(0.5)  # let the servers finish requests wrk left in flight
            sold_out_check = verify_sold_out(admin, redis_url, sold_out_sale, sold_out_result)
        finally:
            admin.close()
    return Measurement(setup, trivial_result, purchase_result, check, warm_check, sold_out_result, sold_out_check)


# ---------------------------------------------------------------------------- report


def print_table(m: Measurement, opts: Options) -> None:
    """The table, the ratio, and PASS/MISS against the aims."""
    header = ["endpoint", "req/s", "p50 ms", "p99 ms", "errors", "server CPU s", "wrk CPU s", "redis CPU s"]
    rows = []
    runs = [
        ("GET /healthz/live", m.trivial, m.trivial.errors),
        ("POST /sales/{id}/purchase", m.purchase, m.purchase.errors),
    ]
    if m.sold_out is not None:
        runs.append(
            ("POST purchase, sold out (409)", m.sold_out, m.sold_out.errors - m.sold_out.statuses.get("409", 0))
        )
    for name, r, errors in runs:
        cpu = [r.cpu_seconds.get(k) for k in ("servers", "wrk", "redis")]
        shown_cpu = [f"{v:.1f}" if v is not None else "-" for v in cpu]
        rows.append([name, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(errors), *shown_cpu])
    print()
    print(f"setup: {describe_setup(m.setup)}")
    print(f"load: wrk -t{opts.threads} -c{opts.connections} -d{opts.duration}s on each, {opts.users:,} users")
    for line in table_lines(header, rows):
        print(line)
    rps_verdict = "PASS" if m.purchase.rps >= AIM_PURCHASES_PER_SECOND else "MISS"
    ratio_verdict = "PASS" if m.ratio >= AIM_RATIO else "MISS"
    check = m.verification
    print()
    print(f"ratio purchase/trivial: {m.ratio:.3f}")
    print(f"aim >= {AIM_PURCHASES_PER_SECOND:,.0f} purchases/s: {rps_verdict} ({m.purchase.rps:,.0f}/s)")
    print(f"aim ratio >= {AIM_RATIO}: {ratio_verdict} ({m.ratio:.3f})")
    print(f"purchases real: {'yes' if check.ok else 'NO'} (sale {check.sale_id}: {check.note})")
    if m.sold_out is not None and m.sold_out_check is not None:
        print_comparison(m.purchase, m.sold_out, m.sold_out_check)
    if m.purchase.status_non_2xx or m.trivial.status_non_2xx:
        print(f"answers by status: trivial {m.trivial.statuses}, purchase {m.purchase.statuses}")


def describe_setup(setup: str) -> str:
    """One line per setup, for the table."""
    return {
        "single": "1 uvicorn process",
        "workers": "uvicorn --workers 2 (one shared socket)",
        "reuseport": "2 replicas, one SO_REUSEPORT port each (uvicorn --fd)",
    }[setup]


def to_json(m: Measurement) -> dict[str, Any]:
    """One measurement as JSON-ready data."""
    return {
        "setup": m.setup,
        "setup_description": describe_setup(m.setup),
        "trivial": asdict(m.trivial) | {"errors": m.trivial.errors},
        "purchase": asdict(m.purchase) | {"errors": m.purchase.errors},
        "ratio": round(m.ratio, 4),
        "aims": {
            "purchases_per_second": {
                "aim": AIM_PURCHASES_PER_SECOND,
                "value": m.purchase.rps,
                "pass": m.purchase.rps >= AIM_PURCHASES_PER_SECOND,
            },
            "ratio": {"aim": AIM_RATIO, "value": round(m.ratio, 4), "pass": m.ratio >= AIM_RATIO},
        },
        "verification": asdict(m.verification),
        "warmup_verification": asdict(m.warmup_verification) if m.warmup_verification else None,
        "sold_out": asdict(m.sold_out) if m.sold_out else None,
        "sold_out_check": asdict(m.sold_out_check) if m.sold_out_check else None,
        "sold_out_vs_purchase": comparison(m.purchase, m.sold_out) if m.sold_out else None,
    }


# ---------------------------------------------------------------------------- main


def run_all(opts: Options, redis_url: str, database_url: str) -> list[Measurement]:
    """Prepare the backends and tokens, then measure each setup (and round) asked for."""
    wrk = ensure_wrk()
    flush_redis(redis_url)
    recreate_database(database_url, service="flashsale")
    print(f"database {make_url(database_url).render_as_string()} (recreated), redis {redis_url} (flushed)")
    token = admin_token()
    setups = list(SETUPS) if opts.compare_setups else [opts.setup]
    with tempfile.TemporaryDirectory(prefix="bench_purchase-") as tmp:
        tokens_file = Path(tmp) / "tokens.txt"
        print(f"minting {opts.users:,} customer tokens", flush=True)
        write_tokens(opts.users, tokens_file)
        return [
            measure(
                setup,
                opts,
                wrk=wrk,
                redis_url=redis_url,
                database_url=database_url,
                tokens_file=tokens_file,
                token=token,
            )
            for _ in range(opts.rounds)
            for setup in setups
        ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when done, 1 on a failure or unverified purchases, 2 on a missed aim with --strict."""
    opts = parse_args(argv)
    stop_servers_on_sigterm()
    load_before = os.getloadavg()
    with ends_cleanly("bench_purchase"):
        redis_url, database_url = urls_from_environment(opts.redis_db, opts.database)
        results = run_all(opts, redis_url, database_url)
    for m in results:
        print_table(m, opts)
    # The headline is the last round of the chosen setup; every measurement is in the JSON.
    main_result = [m for m in results if m.setup == opts.setup][-1]
    report = report_header("loadtest.bench.purchase", argv, load_before, opts)
    report["params"].update(
        {
            "sale_quantity": SALE_QUANTITY,
            "per_user_limit": PER_USER_LIMIT,
            "user_rate_per_second": opts.user_rate if opts.user_rate is not None else "service default",
        }
    )
    report |= {
        **to_json(main_result),
        "measurements": [to_json(m) for m in results] if len(results) > 1 else None,
    }
    write_report(opts.output, report)
    if not all(m.verification.ok and (m.sold_out_check is None or m.sold_out_check.ok) for m in results):
        return 1
    missed = main_result.purchase.rps < AIM_PURCHASES_PER_SECOND or main_result.ratio < AIM_RATIO
    return 2 if missed and opts.strict else 0


if __name__ == "__main__":
    sys.exit(main())

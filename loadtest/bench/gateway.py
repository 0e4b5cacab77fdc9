"""Gateway benchmark: purchases through the gateway against purchases sent straight to flashsale, in one run.

`make bench-gateway` runs `.venv/bin/python -m loadtest.bench.gateway` with REDIS_URL and DATABASE_URL exported.

What one run does (the wrk driver, the servers and the CPU accounting are loadtest/bench's shared modules):
1. recreates the database `flashsale_bench_gw` and flushes logical DB 6 (`--redis-db`) of the Redis in REDIS_URL;
2. starts flashsale as the purchase benchmark's default setup: two replicas, each uvicorn process with its own
   SO_REUSEPORT socket on one port (uvloop, httptools with one send() per answer, no access log);
3. starts the gateway (`gateway.main:app`) the same way: one process (`--gateway reuseport` for two on one
   SO_REUSEPORT port), its flashsale pool pointing at the flashsale port, rate limiting ON (the limits of
   every request of a loop iteration in one Lua call, per-user purchase bucket at its default), the per-IP
   buckets raised because every request comes from 127.0.0.1;
4. mints 20,000 customer tokens; each purchase run gets its own sale (10,000,000 units, limit 1000/user);
5. drives both paths with wrk on this machine, same threads, connections and Lua script: a warm-up of each,
   then `--rounds` (4) interleaved pairs of measured runs of `--duration` / rounds seconds each (20 s in all
   per path): `POST /sales/{id}/purchase` straight at flashsale and `POST /api/flashsale/sales/{id}/purchase`
   at the gateway (unique Idempotency-Key, rotating tokens), the order of the two swapped every round;
6. checks every run's purchases were real (202 answers = reserved units = event stream length);
7. prints req/s, p50, p99, errors and CPU of each path over all its rounds, the ratio gateway/direct of the
   pooled figures and of each round (median, lowest, highest), PASS/MISS of the pooled ratio against the aim
   (>= 0.6), and writes loadtest/results/bench_gateway.json.

`--baseline <commit>` adds a third path for an A/B of a gateway change: the gateway of that commit, checked
out into a temporary git worktree and started from there beside this checkout's (same setup, same flashsale
processes, same tokens), measured in the same interleaved rounds, the order of the three rotated every
round. The table then shows both gateways' ratios to direct and this checkout's req/s against the
baseline's, pooled and per round.

Why interleaved rounds: this machine's speed moves by 20-40 % within a minute (two identical runs of the
old one-run-per-path design gave ratios 0.49 and 0.58). Measuring both paths in alternating slices of the
same minute gives each path the same share of fast and slow moments, so the ratio measures the gateway, not
the moment each path happened to run in.

The flashsale processes serve both runs: the only difference between them is the gateway in the path. On a
machine with 2 cores the gateway's own CPU competes with flashsale's, so the ratio is mostly the gateway's
CPU cost per request (see docs/adr/0003-gateway.md). Why one gateway process by default: at these rates one
process uses about half a core, and on 2 cores shared with flashsale, Redis and wrk it costs ~30 % less CPU
per request than two (~105 us against ~140-180 us: more requests per event-loop iteration and per limiter
call, one token cache instead of two half-warm ones); size gateway workers by the cores given to the gateway.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from loadtest.bench.backends import flush_redis, recreate_database, urls_from_environment
from loadtest.bench.cpu import CpuProbe
from loadtest.bench.errors import BenchError, ends_cleanly
from loadtest.bench.options import Options, add_load_arguments, check_load_arguments
from loadtest.bench.results import RESULTS_DIR, ROOT, report_header, table_lines, write_report
from loadtest.bench.sale import Admin, Verification, admin_token, verify_purchases, write_tokens
from loadtest.bench.servers import GatewayServers, Servers, running, stop_servers_on_sigterm
from loadtest.bench.wrk import WrkResult, ensure_wrk, run_wrk

AIM_RATIO = 0.6
GATEWAY_PREFIX = "/api/flashsale"
GATEWAY_SETUPS = {"single": "1 gateway process", "reuseport": "2 gateway processes, one SO_REUSEPORT port"}


# One measured run of a path: (path, label, seconds) -> the wrk result and the check that its purchases were real.
Purchase = Callable[[str, str, int], tuple[WrkResult, Verification]]


@dataclass
class Run:
    """One measured run of one path."""

    path: str
    round: int
    result: WrkResult
    verification: Verification


@dataclass
class Pooled:
    """One path's runs taken together: requests over seconds, and the CPU they used."""

    path: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    statuses: dict[str, int]
    cpu_seconds: dict[str, float | None]

    @classmethod
    def of(cls, path: str, runs: list[Run]) -> Pooled:
        """Pool the runs of `path`; latency percentiles are the median of the runs' own."""
        mine = [r.result for r in runs if r.path == path]
        requests = sum(r.requests for r in mine)
        seconds = sum(r.duration_s for r in mine)
        statuses: dict[str, int] = {}
        cpu: dict[str, float | None] = {}
        for r in mine:
            for code, n in r.statuses.items():
                statuses[code] = statuses.get(code, 0) + n
            for key, value in r.cpu_seconds.items():
                before = cpu.get(key, 0.0)
                cpu[key] = None if value is None or before is None else round(before + value, 2)
        return cls(
            path=path,
            requests=requests,
            seconds=round(seconds, 3),
            rps=round(requests / seconds, 1) if seconds else 0.0,
            p50_ms=statistics.median(r.p50_ms for r in mine),
            p99_ms=statistics.median(r.p99_ms for r in mine),
            errors=sum(r.errors for r in mine),
            statuses=statuses,
            cpu_seconds=cpu,
        )


@dataclass(frozen=True)
class Setup:
    """What one run compares: the gateway setup, and the commit whose gateway is the baseline (if any)."""

    gateway: str
    baseline: str | None
    output: Path

    @property
    def paths(self) -> list[str]:
        """The measured paths, in the order of the first round."""
        return ["direct", "gateway"] + (["baseline"] if self.baseline else [])


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, Setup]:
    """Read the options; the defaults are what `make bench-gateway` runs."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--gateway", choices=sorted(GATEWAY_SETUPS), default="single", help="gateway processes")
    add_load_arguments(p, duration=20, warmup=6)
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds the duration is split into")
    p.add_argument("--baseline", metavar="COMMIT", help="also measure the gateway of this commit (an A/B)")
    p.add_argument("--redis-db", type=int, default=6, help="Redis logical DB of the benchmark (flushed)")
    p.add_argument("--database", default="flashsale_bench_gw", help="PostgreSQL database (recreated)")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "bench_gateway.json", help="JSON results file")
    p.add_argument("--strict", action="store_true", help="exit 2 when the aim is missed")
    a = p.parse_args(argv)
    check_load_arguments(p, a)
    if a.rounds < 1 or a.duration < a.rounds:
        p.error("need rounds >= 1 and a duration of at least one second per round")
    opts = Options.from_arguments(a, database=a.database, output=a.output, strict=a.strict, rounds=a.rounds)
    return opts, Setup(a.gateway, a.baseline, a.output)


@contextmanager
def baseline_checkout(commit: str | None) -> Iterator[Path | None]:
    """A temporary git worktree of `commit` (removed afterwards), or None without a baseline."""
    if commit is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench_gateway-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        git = ["git", "-C", str(ROOT)]
        done = subprocess.run([*git, "worktree", "add", "--detach", str(tree), commit], capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"cannot check out the baseline {commit!r}: {done.stderr.strip()}")
        try:
            yield tree
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)], capture_output=True, check=False)


@contextmanager
def stack(
    opts: Options, setup: Setup, redis_url: str, database_url: str, baseline_tree: Path | None
) -> Iterator[tuple[Servers, dict[str, Servers]]]:
    """Flashsale (two replicas on SO_REUSEPORT) and the gateway(s) in front of it; all stopped whatever happens."""
    flashsale = Servers("reuseport", redis_url=redis_url, database_url=database_url, user_rate=opts.user_rate)
    with running(flashsale):
        gateway = GatewayServers(setup.gateway, redis_url=redis_url, flashsale_url=flashsale.base_url)
        with running(gateway):
            if baseline_tree is None:
                yield flashsale, {"gateway": gateway}
                return
            baseline = GatewayServers(
                setup.gateway, redis_url=redis_url, flashsale_url=flashsale.base_url, source=baseline_tree
            )
            with running(baseline):
                yield flashsale, {"gateway": gateway, "baseline": baseline}


def measure(
    opts: Options, setup: Setup, redis_url: str, database_url: str, tokens_file: Path
) -> tuple[list[Run], list[Verification]]:
    """Warm up every path, then measure them in interleaved rounds, on the same flashsale processes."""
    wrk = ensure_wrk()
    token = admin_token()
    with baseline_checkout(setup.baseline) as tree, stack(opts, setup, redis_url, database_url, tree) as servers:
        flashsale, gateways = servers
        admin = Admin(flashsale.base_url, token)
        try:
            others = {name: g.pids() for name, g in gateways.items()}
            probe = CpuProbe(flashsale.pids(), redis_url, others)
            tag = uuid.uuid4().hex[:8]
            paths = {"direct": (flashsale.base_url, "")}
            paths |= {name: (g.base_url, GATEWAY_PREFIX) for name, g in gateways.items()}

            def purchase(name: str, label: str, seconds: int) -> tuple[WrkResult, Verification]:
                url, prefix = paths[name]
                sale_id = admin.seed_sale(f"{tag}-{label}")
                args = [str(sale_id), str(tokens_file), f"{tag}{label}", prefix]
                result = run_wrk(
                    wrk, url, endpoint="purchase", seconds=seconds, opts=opts, script_args=args, cpu_probe=probe
                )
                return result, verify_purchases(admin, redis_url, sale_id, result)

            runs, warmups = interleaved_rounds(
                setup.paths, opts, purchase, note=lambda done: f", ratio {round_ratios(done)[-1]:.3f}"
            )
        finally:
            admin.close()
    return runs, warmups


def interleaved_rounds(
    order: list[str], opts: Options, purchase: Purchase, note: Callable[[list[Run]], str] = lambda done: ""
) -> tuple[list[Run], list[Verification]]:
    """A warm-up of every path, then `opts.rounds` rounds of each, the order rotated every round so that every
    path meets the same fast and slow moments of the machine; `note` adds to each round's line."""
    warmups: list[Verification] = []
    if opts.warmup:
        for name in order:
            print(f"[{name}] warm-up {opts.warmup}s (token caches, connection pools)", flush=True)
            warmups.append(purchase(name, f"{name}-w", opts.warmup)[1])
    runs: list[Run] = []
    seconds = opts.duration // opts.rounds
    for n in range(opts.rounds):
        for name in order[n % len(order) :] + order[: n % len(order)]:
            result, check = purchase(name, f"{name}-{n}", seconds)
            runs.append(Run(name, n, result, check))
        shown = ", ".join(f"{r.path} {r.result.rps:,.0f}/s" for r in runs[-len(order) :])
        print(f"round {n + 1}/{opts.rounds}: {shown}{note(runs)}", flush=True)
    return runs, warmups


def round_ratios(runs: list[Run], path: str = "gateway", against: str = "direct") -> list[float]:
    """`path`/`against` req/s of each round (gateway/direct by default)."""
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        by_round.setdefault(run.round, {})[run.path] = run.result.rps
    return [r[path] / r[against] if r.get(against) else 0.0 for _, r in sorted(by_round.items()) if path in r]


def _ratio_line(name: str, ratios: list[float], pooled: float) -> str:
    spread = f"median {statistics.median(ratios):.3f}, lowest {min(ratios):.3f}, highest {max(ratios):.3f}"
    return f"{name}: {pooled:.3f}  (rounds: {spread})"


def print_table(
    runs: list[Run], warmups: list[Verification], pooled: dict[str, Pooled], opts: Options, setup: Setup
) -> float:
    """The table of the pooled runs and the ratios to direct (and to the baseline); returns gateway/direct."""
    header = ["path", "req/s", "p50 ms", "p99 ms", "errors", "flashsale CPU s", "gateway CPU s", "redis CPU s"]
    rows = []
    for p in pooled.values():
        cpu = [p.cpu_seconds.get(k) for k in ("servers", "gateway" if p.path == "direct" else p.path, "redis")]
        shown = [f"{v:.1f}" if v is not None else "-" for v in cpu]
        rows.append([p.path, f"{p.rps:,.0f}", f"{p.p50_ms:.2f}", f"{p.p99_ms:.2f}", str(p.errors), *shown])
    ratio = pooled["gateway"].rps / pooled["direct"].rps if pooled["direct"].rps else 0.0
    seconds = opts.duration // opts.rounds
    print()
    print("flashsale: 2 replicas, one SO_REUSEPORT port each (uvicorn --fd); every path hits the same processes")
    print(f"gateway: {GATEWAY_SETUPS[setup.gateway]}, rate limiter on (1 Redis call per loop iteration)")
    if setup.baseline:
        print(f"baseline: the gateway of {setup.baseline}, same setup, started from a worktree of that commit")
    print(
        f"load: wrk -t{opts.threads} -c{opts.connections}, {opts.users:,} users; {opts.rounds} interleaved rounds"
        f" of {seconds}s per path ({seconds * opts.rounds}s each in all)"
    )
    for line in table_lines(header, rows):
        print(line)
    print()
    verdict = f"aim >= {AIM_RATIO}: {'PASS' if ratio >= AIM_RATIO else 'MISS'}"
    print(f"{_ratio_line('ratio gateway/direct', round_ratios(runs), ratio)}  {verdict}")
    if "baseline" in pooled:
        base = pooled["baseline"].rps
        print(_ratio_line("ratio baseline/direct", round_ratios(runs, "baseline"), base / pooled["direct"].rps))
        print(
            _ratio_line(
                "ratio gateway/baseline", round_ratios(runs, "gateway", "baseline"), pooled["gateway"].rps / base
            )
        )
    bad = [run for run in runs if not run.verification.ok]
    print(f"purchases real: {'yes in all' if not bad else f'NO in {len(bad)} of'} {len(runs)} runs")
    for run in bad:
        print(f"  {run.path} round {run.round + 1}: sale {run.verification.sale_id}: {run.verification.note}")
    for check in warmups:
        if not check.ok:
            print(f"  warm-up: sale {check.sale_id}: {check.note}")
    for p in pooled.values():
        if any(code != "202" for code in p.statuses):
            print(f"{p.path} answers by status: {p.statuses}")
    return ratio


def report(
    argv: Sequence[str] | None, load_before: tuple[float, float, float], opts: Options, setup: Setup, runs: list[Run]
) -> dict[str, object]:
    """The JSON report of the run."""
    pooled = [Pooled.of(path, runs) for path in setup.paths]
    ratios = round_ratios(runs)
    ratio = pooled[1].rps / pooled[0].rps if pooled[0].rps else 0.0
    out = report_header("loadtest.bench.gateway", argv, load_before, opts)
    out["params"]["gateway"] = GATEWAY_SETUPS[setup.gateway]
    out["params"]["rounds"] = opts.rounds
    out["params"]["baseline"] = setup.baseline
    out |= {
        "ratio": round(ratio, 4),
        "round_ratios": [round(r, 4) for r in ratios],
        "median_round_ratio": round(statistics.median(ratios), 4),
        "aim": {"ratio": AIM_RATIO, "pass": ratio >= AIM_RATIO},
        "paths": [asdict(p) for p in pooled],
        "runs": [
            {
                "path": run.path,
                "round": run.round + 1,
                "result": asdict(run.result) | {"errors": run.result.errors},
                "verification": asdict(run.verification),
            }
            for run in runs
        ],
    }
    if setup.baseline:
        out["baseline_round_ratios"] = [round(r, 4) for r in round_ratios(runs, "gateway", "baseline")]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when done, 1 on a failure or unverified purchases, 2 on a missed aim with --strict."""
    opts, setup = parse_args(argv)
    stop_servers_on_sigterm()
    load_before = os.getloadavg()
    with ends_cleanly("bench_gateway"):
        redis_url, database_url = urls_from_environment(opts.redis_db, opts.database)
        flush_redis(redis_url)
        recreate_database(database_url, service="flashsale")
        print(f"database {make_url(database_url).render_as_string()} (recreated), redis {redis_url} (flushed)")
        with tempfile.TemporaryDirectory(prefix="bench_gateway-") as tmp:
            tokens_file = Path(tmp) / "tokens.txt"
            print(f"minting {opts.users:,} customer tokens", flush=True)
            write_tokens(opts.users, tokens_file)
            runs, warmups = measure(opts, setup, redis_url, database_url, tokens_file)
    pooled = {path: Pooled.of(path, runs) for path in setup.paths}
    ratio = print_table(runs, warmups, pooled, opts, setup)
    results = report(argv, load_before, opts, setup, runs)
    results["warmup_verifications"] = [asdict(v) for v in warmups]
    write_report(setup.output, results)
    if not all(run.verification.ok for run in runs) or not all(v.ok for v in warmups):
        return 1
    return 2 if ratio < AIM_RATIO and opts.strict else 0


if __name__ == "__main__":
    sys.exit(main())

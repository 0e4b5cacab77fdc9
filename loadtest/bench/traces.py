"""Traces benchmark: what tracing costs the purchase, off and sampled, against an earlier commit, in one run.

`make bench-traces` runs `.venv/bin/python -m loadtest.bench.traces` with REDIS_URL and DATABASE_URL exported;
`make bench-traces BENCH_ARGS="--baseline HEAD~2"` adds the flashsale of that commit.

What one run does (the wrk driver, the servers, the sale seeding and the CPU accounting are the purchase
benchmark's, loadtest/bench/):
1. recreates the database `flashsale_bench_tr` and flushes logical DB 7 (`--redis-db`) of the Redis in REDIS_URL;
2. starts an OTLP/HTTP sink (loadtest/bench/otlp_sink.py) that accepts every export and discards it;
3. starts flashsale as `make bench` does (two replicas on one SO_REUSEPORT port) once per variant, all at once:
   `off` (this checkout, no OTEL_* variable), `sampled` (this checkout with OTEL_TRACES_EXPORTER=otlp,
   OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG=`--ratio` (0.01), exporting to the
   sink), and with `--baseline COMMIT` `baseline` (that commit, checked out into a temporary git worktree);
4. mints 20,000 customer tokens; each purchase run gets its own sale (10,000,000 units, limit 1000/user);
5. warms up each variant, then measures `--rounds` (4) interleaved rounds of `POST /sales/{id}/purchase` on
   each, `--duration` / rounds seconds a run, the order of the variants rotated every round;
6. checks every run's purchases were real (202 answers = reserved units = event stream length);
7. prints req/s, p50, p99, errors, server CPU seconds and CPU per purchase of each variant over its rounds, the
   ratios sampled/off and off/baseline (pooled, and median/lowest/highest of the rounds), the sink's export
   count, and writes loadtest/results/bench_traces.json.

`--through-gateway` puts a gateway (one process, as `make bench-gateway` runs it, with the variant's OTEL_*
variables and source tree) in front of each variant's flashsale and drives purchases through it: the gateway is
then the root of each trace, flashsale follows its decision, and the CPU per purchase counts both.

The variants' processes stay up through the whole run, idle when not driven; only the driven one competes with
wrk and Redis for the two cores. The machine is shared, so single runs are noisy: read the CPU per purchase
beside req/s, and the spread of the round ratios before the pooled one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from loadtest.bench.backends import flush_redis, recreate_database, urls_from_environment
from loadtest.bench.cpu import CpuProbe
from loadtest.bench.errors import BenchError, ends_cleanly
from loadtest.bench.gateway import GATEWAY_PREFIX, Pooled, Run, baseline_checkout, interleaved_rounds, round_ratios
from loadtest.bench.options import Options, add_load_arguments, check_load_arguments
from loadtest.bench.results import RESULTS_DIR, ROOT, report_header, table_lines, write_report
from loadtest.bench.sale import Admin, Verification, admin_token, verify_purchases, write_tokens
from loadtest.bench.servers import GatewayServers, Servers, free_port, running, stop_servers_on_sigterm
from loadtest.bench.wrk import WrkResult, ensure_wrk, run_wrk


class VariantServers(Servers):
    """Flashsale in the purchase benchmark's setup, with its own OTEL_* variables and source tree."""

    def __init__(
        self, name: str, *, redis_url: str, database_url: str, otel: dict[str, str], source: Path | None = None
    ) -> None:
        super().__init__("reuseport", redis_url=redis_url, database_url=database_url, user_rate=None)
        self.otel = otel
        self.log_prefix = f"traces-{name}"
        if source is not None:
            self.source = source

    def _env(self, replica: str) -> dict[str, str]:
        env = {k: v for k, v in super()._env(replica).items() if not k.startswith("OTEL_")}
        return env | self.otel


class VariantGateway(GatewayServers):
    """One gateway process in front of a variant's flashsale, with the variant's OTEL_* variables and source."""

    def __init__(self, name: str, *, redis_url: str, flashsale: VariantServers) -> None:
        source = flashsale.source if flashsale.source != ROOT else None
        super().__init__("single", redis_url=redis_url, flashsale_url=flashsale.base_url, source=source)
        self.otel = flashsale.otel
        self.log_prefix = f"traces-gateway-{name}"

    def _env(self, replica: str) -> dict[str, str]:
        env = {k: v for k, v in super()._env(replica).items() if not k.startswith("OTEL_")}
        return env | self.otel | ({"OTEL_SERVICE_NAME": "gateway"} if self.otel else {})


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, float, str | None, Path, bool]:
    """The options, the sampling ratio, the baseline commit and the output file."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_load_arguments(p, duration=40, warmup=6)
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds (the duration is split over them)")
    p.add_argument("--ratio", type=float, default=0.01, help="OTEL_TRACES_SAMPLER_ARG of the sampled variant")
    p.add_argument("--baseline", metavar="COMMIT", help="also measure the flashsale of this commit")
    p.add_argument("--through-gateway", action="store_true", help="purchases through a gateway per variant")
    p.add_argument("--redis-db", type=int, default=7, help="Redis logical DB of the benchmark (flushed)")
    p.add_argument("--database", default="flashsale_bench_tr", help="PostgreSQL database of the benchmark")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "bench_traces.json", help="JSON results file")
    a = p.parse_args(argv)
    check_load_arguments(p, a)
    if a.rounds < 1 or a.duration < a.rounds or not 0 <= a.ratio <= 1:
        p.error("need rounds >= 1, a duration of at least one second per round and 0 <= ratio <= 1")
    opts = Options.from_arguments(a, database=a.database, output=a.output, rounds=a.rounds)
    return opts, a.ratio, a.baseline, a.output, a.through_gateway


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    """The discarding OTLP/HTTP sink as a process of its own; its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "loadtest.bench.otlp_sink:app", "--port", str(port)]
    cmd += ["--no-access-log", "--log-level", "warning", "--lifespan", "off"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/stats", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("the OTLP sink did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def sampled_env(sink_url: str, ratio: float) -> dict[str, str]:
    """The standard OTEL_* variables of the sampled variant."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(ratio),
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{sink_url}/v1/traces",
        "OTEL_SERVICE_NAME": "flashsale",
    }


@dataclass(frozen=True)
class Variant:
    """Where a variant's purchases go, and the processes whose CPU they cost."""

    url: str
    prefix: str
    pids: list[int]
    flashsale_url: str  # the admin API that seeds and checks the sales


@contextlib.contextmanager
def variants(
    redis_url: str, database_url: str, sink_url: str, ratio: float, baseline: Path | None, through_gateway: bool
) -> Iterator[dict[str, Variant]]:
    """Every variant's processes, started together and stopped whatever happens."""
    wanted = {
        "off": VariantServers("off", redis_url=redis_url, database_url=database_url, otel={}),
        "sampled": VariantServers(
            "sampled", redis_url=redis_url, database_url=database_url, otel=sampled_env(sink_url, ratio)
        ),
    }
    if baseline is not None:
        wanted["baseline"] = VariantServers(
            "baseline", redis_url=redis_url, database_url=database_url, otel={}, source=baseline
        )
    with contextlib.ExitStack() as stack:
        out = {}
        for name, flashsale in wanted.items():
            stack.enter_context(running(flashsale))
            if not through_gateway:
                out[name] = Variant(flashsale.base_url, "", flashsale.pids(), flashsale.base_url)
                continue
            gateway = stack.enter_context(running(VariantGateway(name, redis_url=redis_url, flashsale=flashsale)))
            pids = flashsale.pids() + gateway.pids()
            out[name] = Variant(gateway.base_url, GATEWAY_PREFIX, pids, flashsale.base_url)
        yield out


def measure(
    opts: Options, servers: dict[str, Variant], admin_url: str, redis_url: str, tokens_file: Path
) -> tuple[list[Run], list[Verification]]:
    """Warm up every variant, then measure them in interleaved rounds."""
    wrk = ensure_wrk()
    admin = Admin(admin_url, admin_token())
    try:
        probe = CpuProbe([], redis_url, {name: v.pids for name, v in servers.items()})
        tag = uuid.uuid4().hex[:8]

        def purchase(name: str, label: str, seconds: int) -> tuple[WrkResult, Verification]:
            sale_id = admin.seed_sale(f"{tag}-{label}")
            args = [str(sale_id), str(tokens_file), f"{tag}{label}", servers[name].prefix]
            result = run_wrk(
                wrk,
                servers[name].url,
                endpoint="purchase",
                seconds=seconds,
                opts=opts,
                script_args=args,
                cpu_probe=probe,
            )
            # The variant's own processes are its "servers" (the probe counts every variant apart).
            result.cpu_seconds["servers"] = result.cpu_seconds.get(name)
            return result, verify_purchases(admin, redis_url, sale_id, result)

        runs, warmups = interleaved_rounds(list(servers), opts, purchase)
    finally:
        admin.close()
    return runs, warmups


def _us_per_purchase(p: Pooled) -> str:
    cpu = p.cpu_seconds.get("servers")
    return f"{cpu / p.requests * 1e6:.0f}" if cpu is not None and p.requests else "-"


def _ratio_line(name: str, runs: list[Run], path: str, against: str, pooled: dict[str, Pooled]) -> str:
    rounds = round_ratios(runs, path, against)
    whole = pooled[path].rps / pooled[against].rps if pooled[against].rps else 0.0
    spread = f"median {statistics.median(rounds):.3f}, lowest {min(rounds):.3f}, highest {max(rounds):.3f}"
    return f"{name}: {whole:.3f}  (rounds: {spread})"


def print_table(
    runs: list[Run], pooled: dict[str, Pooled], opts: Options, ratio: float, exports: int, through_gateway: bool
) -> None:
    """The pooled table of every variant and the ratios between them."""
    header = ["variant", "req/s", "p50 ms", "p99 ms", "errors", "server CPU s", "CPU us/purchase"]
    rows = []
    for p in pooled.values():
        cpu = p.cpu_seconds.get("servers")
        shown = f"{cpu:.1f}" if cpu is not None else "-"
        rows.append(
            [p.path, f"{p.rps:,.0f}", f"{p.p50_ms:.2f}", f"{p.p99_ms:.2f}", str(p.errors), shown, _us_per_purchase(p)]
        )
    print()
    print(f"load: wrk -t{opts.threads} -c{opts.connections}, {opts.rounds} rounds of {opts.duration // opts.rounds}s")
    print("path: through a gateway per variant (CPU: gateway + flashsale)" if through_gateway else "path: direct")
    print(f"sampled: parentbased_traceidratio {ratio}, OTLP/HTTP to a discarding sink ({exports} export calls)")
    for line in table_lines(header, rows):
        print(line)
    print(_ratio_line("ratio sampled/off", runs, "sampled", "off", pooled))
    if "baseline" in pooled:
        print(_ratio_line("ratio off/baseline", runs, "off", "baseline", pooled))
    bad = [r for r in runs if not r.verification.ok]
    print(f"purchases real: {'yes in all' if not bad else f'NO in {len(bad)} of'} {len(runs)} runs")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when done, 1 on a failure or unverified purchases."""
    opts, ratio, baseline, output, through_gateway = parse_args(argv)
    stop_servers_on_sigterm()
    load_before = os.getloadavg()
    with ends_cleanly("bench_traces"):
        redis_url, database_url = urls_from_environment(opts.redis_db, opts.database)
        flush_redis(redis_url)
        recreate_database(database_url, service="flashsale")
        print(f"database {make_url(database_url).render_as_string()} (recreated), redis {redis_url} (flushed)")
        with tempfile.TemporaryDirectory(prefix="bench_traces-") as tmp:
            tokens_file = Path(tmp) / "tokens.txt"
            print(f"minting {opts.users:,} customer tokens", flush=True)
            write_tokens(opts.users, tokens_file)
            with (
                otlp_sink() as sink_url,
                baseline_checkout(baseline) as tree,
                variants(redis_url, database_url, sink_url, ratio, tree, through_gateway) as servers,
            ):
                runs, warmups = measure(opts, servers, servers["off"].flashsale_url, redis_url, tokens_file)
                time.sleep(6)  # the batch span processor exports every 5 s
                exports = int(httpx.get(f"{sink_url}/stats", timeout=5).json()["exports"])
    pooled = {name: Pooled.of(name, runs) for name in dict.fromkeys(r.path for r in runs)}
    print_table(runs, pooled, opts, ratio, exports, through_gateway)
    report = report_header("loadtest.bench.traces", argv, load_before, opts)
    report["params"] |= {
        "ratio": ratio,
        "baseline": baseline,
        "rounds": opts.rounds,
        "through_gateway": through_gateway,
    }
    report |= {
        "variants": [asdict(p) | {"cpu_us_per_purchase": _us_per_purchase(p)} for p in pooled.values()],
        "round_ratios_sampled_off": [round(r, 4) for r in round_ratios(runs, "sampled", "off")],
        "round_ratios_off_baseline": [round(r, 4) for r in round_ratios(runs, "off", "baseline")] if baseline else None,
        "exports": exports,
        "runs": [{"variant": r.path, "round": r.round + 1, "result": asdict(r.result)} for r in runs],
        "warmup_verifications": [asdict(v) for v in warmups],
    }
    write_report(output, report)
    return 0 if all(r.verification.ok for r in runs) and all(v.ok for v in warmups) else 1


if __name__ == "__main__":
    sys.exit(main())

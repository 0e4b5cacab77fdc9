"""Failure drills, one command each: load the whole chain, break one thing on purpose, restore it, let the queues
drain, then ask the checker whether anything was oversold, lost or duplicated.

    .venv/bin/python -m loadtest.drills DRILL [--peak 50 --multiple 5 --quantity 250 --duration 90 ...]

DRILL is one of:
  baseline       no fault: the reference run
  kill-replica   SIGKILL flashsale-2 mid-sale; the launcher starts it again after --fault-for s
  postgres-down  stop PostgreSQL (fast shutdown) for --fault-for s (default 30), then start it again
  payment-down   the primary payment provider answers errors (paysim fault injection) for --fault-for s
  redis-restart  restart Redis mid-sale (SIGTERM: AOF fsynced on shutdown; --hard: SIGKILL, up to 1 s lost)

Each drill: `python -m deploy up --private` (private Redis and PostgreSQL under .stack/, 2 replicas per service;
STACK_PORT_OFFSET applies), seeds a sale (loadtest/seed.py), runs Locust headless with the flash-crowd shape
(LOADTEST_NORMAL_PEAK x LOADTEST_MULTIPLE users from a few seconds before the start), injects the fault at
--fault-at s, restores it, waits for Locust to finish, waits for the order consumers to drain, runs the checker
and writes the report (summary.md, summary.json, plot.png, Locust's HTML and CSVs) to loadtest/results/<drill>-<time>/.
Exit status: the checker's (0 all held, 1 a violation, 2 could not check). The stack is left running
(`make down` stops it), so several drills can run one after another without restarting it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from deploy import state as launcher_state
from loadtest.checker import Admin, CheckError, admin_token, check_sales, read_acknowledged, write_findings
from loadtest.crowd import start_crowd, wait_for_crowd
from loadtest.report import write_report
from loadtest.seed import seed_run
from loadtest.server_metrics import difference, scrape
from loadtest.targets import ROOT, Targets, replica_urls, resolve, stack_redis_url

RESULTS = ROOT / "loadtest" / "results"
DRILLS = ("baseline", "kill-replica", "postgres-down", "payment-down", "redis-restart")
PAYMENT_DEADLINE = 30  # seconds an order may stay unpaid in a drill: the never-payers' orders expire within it


@dataclass(slots=True)
class Options:
    """The drill and its load."""

    drill: str
    peak: int
    multiple: float
    quantity: int
    limit: int
    duration: float
    start_in: float
    fault_at: float
    fault_for: float
    hard: bool
    drain: float


def stack(*args: str) -> None:
    """Run the launcher (its own lock makes concurrent calls wait); raise when it fails."""
    cmd = [sys.executable, "-m", "deploy", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def bring_up() -> None:
    """The stack with private backends, unpaid orders expiring after PAYMENT_DEADLINE s; also the restore step:
    the launcher starts again whatever of it is not running (a killed replica, a stopped backend)."""
    stack("up", "--private", "--payment-deadline", str(PAYMENT_DEADLINE))


def recorded(name: str) -> dict[str, Any]:
    """The launcher's record (pid, start time) of one process it started."""
    state: dict[str, Any] = launcher_state.load_state()
    record: dict[str, Any] | None = state["processes"].get(name)
    if record is None:
        raise RuntimeError(f"the launcher did not start {name} (is the stack up with --private?)")
    return record


def stop_recorded_process(name: str, sig: int) -> None:
    """Stop one process the launcher started, leaving its record (the restore step starts it again)."""
    launcher_state.stop_process(name, recorded(name), first_signal=sig)


class Fault:
    """Inject and restore one fault."""

    def __init__(self, name: str, hard: bool, admin_headers: dict[str, str]) -> None:
        self.name = name
        self.hard = hard
        self.admin_headers = admin_headers

    def inject(self) -> None:
        """Break it."""
        if self.name == "kill-replica":
            os.kill(int(recorded("flashsale-2")["pid"]), signal.SIGKILL)
        elif self.name == "postgres-down":
            stop_recorded_process("postgres", signal.SIGINT)  # PostgreSQL's fast shutdown
        elif self.name == "redis-restart":
            stop_recorded_process("redis", signal.SIGKILL if self.hard else signal.SIGTERM)
        elif self.name == "payment-down":
            url = f"{replica_urls('paysim')[0]}/admin/faults"
            httpx.put(url, json={"down": True}, headers=self.admin_headers, timeout=10).raise_for_status()

    def restore(self) -> None:
        """Mend it."""
        if self.name == "payment-down":
            url = f"{replica_urls('paysim')[0]}/admin/faults"
            httpx.delete(url, headers=self.admin_headers, timeout=10).raise_for_status()
        elif self.name != "baseline":
            bring_up()


def run_locust(run_dir: Path, opts: Options, targets: Targets) -> subprocess.Popen[bytes]:
    """Locust headless with the flash-crowd shape, its CSVs and HTML report in the run directory."""
    shape = {
        "LOADTEST_SHAPE": "flash",
        "LOADTEST_NORMAL_PEAK": str(opts.peak),
        "LOADTEST_MULTIPLE": str(opts.multiple),
        "LOADTEST_HOLD": str(opts.duration - opts.start_in),
    }
    return start_crowd(run_dir, targets, shape)


def at_times(steps: list[tuple[float, Callable[[], None]]], started: float, log: list[str]) -> threading.Thread:
    """Run each step at its time after `started`, in a thread (Locust runs meanwhile)."""

    def body() -> None:
        for when, step in steps:
            time.sleep(max(0.0, started + when - time.monotonic()))
            try:
                step()
            except Exception as exc:  # a failed injection is reported, and the drill still finishes
                log.append(f"{getattr(step, '__name__', 'step')}: {exc}")

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def drill(opts: Options) -> int:
    """One drill, start to report; returns the checker's exit status."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = RESULTS / f"{opts.drill}-{stamp}"
    print(f"[{opts.drill}] bringing the stack up (STACK_PORT_OFFSET={os.environ.get('STACK_PORT_OFFSET', '0')})")
    bring_up()
    targets = resolve()
    users = max(1, round(opts.peak * opts.multiple))
    run = seed_run(
        targets,
        run_dir,
        quantity=opts.quantity,
        limit=opts.limit,
        start_in=opts.start_in,
        duration_minutes=30,
        users=users * 2,
        coupons=max(1, opts.quantity // 5),
    )
    token = admin_token()
    headers = {"authorization": f"Bearer {token}"}
    fault = Fault(opts.drill, opts.hard, headers)
    print(
        f"[{opts.drill}] sale {run['sale_id']}: {opts.quantity} units, starts in {opts.start_in:.0f}s; "
        f"{users} users ({opts.peak} x {opts.multiple}) via {targets.mode}; results in {run_dir.relative_to(ROOT)}"
    )
    events: dict[str, Any] = {"name": opts.drill}
    problems: list[str] = []

    def inject() -> None:
        events["injected_at"] = time.time()
        print(f"[{opts.drill}] fault injected at +{opts.fault_at:.0f}s")
        fault.inject()

    def restore() -> None:
        events["restore_started_at"] = time.time()
        fault.restore()
        events["restored_at"] = time.time()
        print(f"[{opts.drill}] fault restored ({events['restored_at'] - events['injected_at']:.1f}s after injection)")

    servers = {"order": replica_urls("order"), "providers": replica_urls("paysim")}
    before = {role: scrape(urls) for role, urls in servers.items()}
    locust = run_locust(run_dir, opts, targets)
    started = time.monotonic()
    timer = None
    if opts.drill != "baseline":
        timer = at_times([(opts.fault_at, inject), (opts.fault_at + opts.fault_for, restore)], started, problems)
    wait_for_crowd(locust, opts.duration + opts.fault_for + 120)
    if timer is not None:
        timer.join()
    after = {role: scrape(urls) for role, urls in servers.items()}
    server_side = {role: difference(before[role], after[role]) for role in servers}
    (run_dir / "server_metrics.json").write_text(json.dumps(server_side, indent=2) + "\n")
    events["injected_after_s"] = opts.fault_at
    if "injected_at" in events and "restored_at" in events:
        events["lasted_s"] = events["restored_at"] - events["injected_at"]
    (run_dir / "drill.json").write_text(
        json.dumps({"drill": opts.drill, "fault": events if opts.drill != "baseline" else None, "problems": problems})
        + "\n"
    )
    print(f"[{opts.drill}] load done (locust exit {locust.returncode}); draining and checking")
    code = check(run_dir, targets, token, int(run["sale_id"]), opts.drain)
    summary = write_report(run_dir)
    print((run_dir / "summary.md").read_text())
    if problems:
        print(f"[{opts.drill}] fault steps that failed: {problems}")
    print(f"[{opts.drill}] summary: {run_dir.relative_to(ROOT)}/summary.md; throughput {summary['throughput_rps']}")
    return code


def check(run_dir: Path, targets: Targets, token: str, sale_id: int, drain: float) -> int:
    """The checker over the run's sale (waiting up to `drain` s), its findings and the sale's stats saved."""
    admin = Admin(targets, token)
    redis = Redis.from_url(stack_redis_url(), socket_timeout=10)
    try:
        acknowledged = read_acknowledged(run_dir / "accepted.jsonl", {sale_id})
        findings, _facts = check_sales(admin, redis, [sale_id], acknowledged, drain)
        sale = admin.get("flashsale", f"/admin/sales/{sale_id}")
        stats = admin.get("flashsale", f"/admin/sales/{sale_id}/stats")
    except CheckError as exc:
        print(f"checker: could not check: {exc}")
        (run_dir / "checker.json").write_text(json.dumps({"ok": None, "error": str(exc), "findings": []}) + "\n")
        return 2
    finally:
        admin.close()
        redis.close()
    (run_dir / "sale.json").write_text(json.dumps({**sale, **stats}, indent=2, default=str) + "\n")
    ok = write_findings(run_dir / "checker.json", findings)
    for f in findings:
        print(f"  {'ok  ' if f.ok else 'FAIL'} {f.name:<24} {f.detail}")
    return 0 if ok else 1


def parse_args(argv: Sequence[str] | None) -> Options:
    """The command line; load defaults from LOADTEST_NORMAL_PEAK / LOADTEST_MULTIPLE."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("drill", choices=DRILLS)
    p.add_argument("--peak", type=int, default=int(os.environ.get("LOADTEST_NORMAL_PEAK", "50")))
    p.add_argument("--multiple", type=float, default=float(os.environ.get("LOADTEST_MULTIPLE", "5")))
    p.add_argument(
        "--quantity", type=int, default=None, help="units on sale (default: one per user, so the crowd sells it out)"
    )
    p.add_argument("--limit", type=int, default=2, help="per-user limit")
    p.add_argument("--duration", type=float, default=90.0, help="seconds of load")
    p.add_argument("--start-in", type=float, default=10.0, help="seconds from the load's start to the sale's")
    p.add_argument("--fault-at", type=float, default=None, help="seconds after the load starts (default: start + 5)")
    p.add_argument("--fault-for", type=float, default=None, help="seconds until it is restored (30; redis: 0)")
    p.add_argument("--hard", action="store_true", help="redis-restart: SIGKILL instead of SIGTERM")
    p.add_argument("--drain", type=float, default=120.0, help="seconds to wait for orders to catch up")
    a = p.parse_args(argv)
    fault_for = a.fault_for if a.fault_for is not None else (0.0 if a.drill == "redis-restart" else 30.0)
    return Options(
        drill=a.drill,
        peak=a.peak,
        multiple=a.multiple,
        quantity=a.quantity if a.quantity is not None else max(10, round(a.peak * a.multiple)),
        limit=a.limit,
        duration=a.duration,
        start_in=a.start_in,
        fault_at=a.fault_at if a.fault_at is not None else a.start_in + 5,
        fault_for=fault_for,
        hard=a.hard,
        drain=a.drain,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one drill."""
    return drill(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

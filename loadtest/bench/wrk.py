"""The wrk driver: finds (or installs) wrk, runs it with wrk_bench.lua, and reads the script's result line.

Every benchmark drives its servers through `run_wrk`, so each row of every table comes from the same client-side
work: the same Lua script, threads, connections and timeout, and CPU read around the run by a `CpuProbe`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.bench.cpu import CpuProbe
from loadtest.bench.errors import BenchError
from loadtest.bench.options import Options

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk_bench.lua"


def ensure_wrk() -> str:
    """The wrk binary; installs it with apt-get when it is missing and we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("wrk not found; installing it with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
            subprocess.run(install, env=env, capture_output=True, check=False)
        found = shutil.which("wrk")
        if found:
            return found
    raise BenchError(
        "wrk (the HTTP load generator) is not installed and could not be installed here. "
        "Install it with `sudo apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk` (macOS), "
        "then run the benchmark again."
    )


@dataclass
class WrkResult:
    """One wrk run, as the Lua `done()` hook reported it."""

    endpoint: str
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    status_202: int
    status_other_2xx: int
    status_non_2xx: int
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    in_flight_at_stop: int
    cpu_seconds: dict[str, float | None] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """Non-2xx answers plus socket errors (connect, read, write, timeout)."""
        sock = sum(v for k, v in self.socket_errors.items() if k != "status")
        return self.status_non_2xx + sock


def run_wrk(
    wrk: str,
    url: str,
    *,
    endpoint: str,
    seconds: int,
    opts: Options,
    script_args: list[str],
    cpu_probe: CpuProbe,
) -> WrkResult:
    """Run wrk with the benchmark's Lua script and parse its `BENCH_RESULT` line."""
    cmd = [wrk, "-t", str(opts.threads), "-c", str(opts.connections), "-d", f"{seconds}s", "--timeout", "10s"]
    cmd += ["-s", str(LUA_SCRIPT), url, "--", endpoint, str(opts.threads), *script_args]
    before = cpu_probe.sample()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    cpu = cpu_probe.delta(before)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    data: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
    lat = data["latency_us"]
    duration_s = data["duration_us"] / 1e6
    return WrkResult(
        endpoint=endpoint,
        requests=int(data["requests"]),
        duration_s=round(duration_s, 3),
        rps=round(data["requests"] / duration_s, 1) if duration_s else 0.0,
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        p999_ms=lat["p999"] / 1000,
        max_ms=lat["max"] / 1000,
        mean_ms=round(lat["mean"] / 1000, 3),
        status_202=int(data["status_202"]),
        status_other_2xx=int(data["status_other_2xx"]),
        status_non_2xx=int(data["status_non_2xx"]),
        statuses={str(k): int(v) for k, v in data["statuses"].items()},
        socket_errors={str(k): int(v) for k, v in data["socket_errors"].items()},
        in_flight_at_stop=max(0, int(data["sent"]) - int(data["received"])),
        cpu_seconds=cpu,
    )

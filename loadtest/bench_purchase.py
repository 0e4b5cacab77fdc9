"""Purchase benchmark: the purchase endpoint against a trivial endpoint of the same server, and accepted
purchases against the answers of a sold-out sale, in one run.

`make bench` runs `.venv/bin/python loadtest/bench_purchase.py` with REDIS_URL and DATABASE_URL exported.

What one run does:
1. recreates a dedicated database (`flashsale_bench`, migrated with `services.common.migrate`) and flushes
   logical DB 5 (`--redis-db`) of the Redis in REDIS_URL: only that DB is flushed;
2. starts the flashsale service with uvicorn (uvloop, httptools with one send() per answer, no access log) in
   the server setup below;
3. mints 20,000 customer tokens and one admin token, and seeds each purchase run with its own sale through
   the admin API (10,000,000 units so it never sells out, per-user limit 1000, started now);
4. drives both endpoints with wrk on this machine, same threads and connections: a warm-up of each, then a
   measured run of `GET /healthz/live` (same middleware stack) and of `POST /sales/{id}/purchase`
   (`{"quantity":1}`, a unique Idempotency-Key per request, bearer tokens rotating over the 20,000 users);
5. checks that the purchases were real: answers 202 = the sale's `reserved` units (admin stats) = the
   length of its event stream `{fs:<id>}:events` (give or take requests wrk left in flight when it stopped);
6. the sold-out phase (loadtest/bench_sold_out.py): the same purchase request on a sale whose one unit was
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
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from bench_sold_out import (  # loadtest/ scripts import each other by file name
    SoldOutCheck,
    SoldOutPhaseError,
    comparison,
    print_comparison,
    seed_sold_out_sale,
    verify_sold_out,
)
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.engine import make_url

from services.common.auth import issue_token
from services.common.config import BaseServiceSettings

ROOT = Path(__file__).resolve().parent.parent
LOADTEST_DIR = ROOT / "loadtest"
RESULTS_DIR = LOADTEST_DIR / "results"
LUA_SCRIPT = LOADTEST_DIR / "wrk_bench.lua"
UVICORN_FD = LOADTEST_DIR / "uvicorn_fd.py"  # uvicorn's CLI, with --fd working for TCP sockets

SETUPS = ("single", "workers", "reuseport")
DEFAULT_SETUP = "reuseport"  # two replicas on one port; the module docstring says why
AIM_PURCHASES_PER_SECOND = 2000.0
AIM_RATIO = 0.5
SALE_QUANTITY = 10_000_000
PER_USER_LIMIT = 1000


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


# ---------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Options:
    """Command-line options."""

    setup: str
    compare_setups: bool
    duration: int
    warmup: int
    connections: int
    threads: int
    users: int
    redis_db: int
    database: str
    user_rate: float | None
    output: Path
    strict: bool
    rounds: int

    @classmethod
    def from_arguments(
        cls,
        a: argparse.Namespace,
        *,
        database: str,
        output: Path,
        setup: str = "reuseport",
        compare_setups: bool = False,
        user_rate: float | None = None,
        strict: bool = False,
        rounds: int = 1,
    ) -> Options:
        """Options with the load (add_load_arguments) and the Redis DB taken from parsed arguments `a`."""
        return cls(
            setup=setup,
            compare_setups=compare_setups,
            duration=a.duration,
            warmup=a.warmup,
            connections=a.connections,
            threads=a.threads,
            users=a.users,
            redis_db=a.redis_db,
            database=database,
            user_rate=user_rate,
            output=output,
            strict=strict,
            rounds=rounds,
        )


def add_load_arguments(p: argparse.ArgumentParser, *, duration: int, warmup: int) -> None:
    """The wrk load every benchmark of loadtest/ takes: duration, warm-up, connections, threads, users."""
    p.add_argument("--duration", type=int, default=duration, help="seconds of each measured run")
    p.add_argument("--warmup", type=int, default=warmup, help="seconds of each warm-up run")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (every run)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (every run)")
    p.add_argument("--users", type=int, default=20_000, help="distinct customers the tokens rotate over")


def check_load_arguments(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Refuse a load wrk cannot run (exits with argparse's usage error)."""
    if a.threads < 1 or a.connections < a.threads or a.duration < 1 or a.warmup < 0 or a.users < 1:
        p.error("need threads >= 1, connections >= threads, duration >= 1, warmup >= 0, users >= 1")


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


def bench_redis_url(url: str, db: int) -> str:
    """REDIS_URL pointed at logical DB `db` (path for redis://, rediss://; `?db=` for unix://)."""
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
    if parts.scheme == "unix":
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
        query = f"{query}&db={db}" if query else f"db={db}"
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
    raise BenchError(f"REDIS_URL scheme {parts.scheme!r} has no logical DBs; use redis://, rediss:// or unix://")


def bench_database_url(url: str, name: str) -> str:
    """DATABASE_URL (server level) pointed at the benchmark's own database."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.set(database=name).render_as_string(hide_password=False)


# ---------------------------------------------------------------------------- backends


async def _drop_database(url: str) -> None:
    parsed = make_url(url)
    admin_dsn = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
    finally:
        await conn.close()


def prepare_database(url: str) -> None:
    """Drop the benchmark database and migrate a fresh one (earlier runs' sales must not weigh on this one)."""
    name = make_url(url).database or ""
    if not name.startswith("flashsale_bench"):
        raise BenchError(f"refusing to drop database {name!r}: the benchmark database must be flashsale_bench*")
    try:
        asyncio.run(_drop_database(url))
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"PostgreSQL at {make_url(url).render_as_string()} is not usable: {exc}") from exc
    proc = subprocess.run(
        [sys.executable, "-m", "services.common.migrate", "flashsale", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"migration failed:\n{proc.stdout}{proc.stderr}")


def flush_redis(url: str) -> None:
    """FLUSHDB on the benchmark's logical DB only."""
    client = Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    except (OSError, RedisError) as exc:
        raise BenchError(f"Redis at {url} is not usable: {exc}") from exc
    finally:
        client.close()


def redis_cpu_seconds(url: str) -> float | None:
    """CPU time Redis has used so far (user + sys), or None if it cannot tell."""
    client = Redis.from_url(url, socket_connect_timeout=2, decode_responses=True)
    try:
        info: dict[str, Any] = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except (OSError, RedisError, KeyError, ValueError):
        return None
    finally:
        client.close()


# ---------------------------------------------------------------------------- wrk


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
    cmd = [
        wrk,
        "-t",
        str(opts.threads),
        "-c",
        str(opts.connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        endpoint,
        str(opts.threads),
        *script_args,
    ]
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


# ---------------------------------------------------------------------------- servers


def _proc_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child_pids(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


class CpuProbe:
    """CPU seconds used by the servers (and their workers), wrk (our children) and Redis during a run."""

    def __init__(self, server_pids: list[int], redis_url: str) -> None:
        self.server_pids = server_pids
        self.redis_url = redis_url

    def _servers(self) -> float:
        pids = set(self.server_pids)
        for pid in self.server_pids:
            pids.update(_child_pids(pid))
        return sum(_proc_cpu_seconds(p) for p in pids)

    def sample(self) -> dict[str, float | None]:
        """Cumulative CPU seconds now."""
        children = os.times()
        return {
            "servers": self._servers(),
            "wrk": children.children_user + children.children_system,
            "redis": redis_cpu_seconds(self.redis_url),
        }

    def delta(self, before: dict[str, float | None]) -> dict[str, float | None]:
        """CPU seconds used since `before`."""
        after = self.sample()
        out: dict[str, float | None] = {}
        for key, value in after.items():
            start = before.get(key)
            out[key] = None if value is None or start is None else round(value - start, 2)
        return out


def _reuseport_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Servers:
    """The flashsale processes of one setup; `stop()` ends exactly the processes this class started."""

    APP = "services.flashsale.main:app"
    LOG_PREFIX = "server"  # logs go to loadtest/results/<LOG_PREFIX>-<replica>.log
    HTTP = "services.common.server:CoalescingHttpProtocol"  # uvicorn's --http, as the launcher runs services
    EXTRA_ARGS: tuple[str, ...] = ()

    def __init__(self, setup: str, *, redis_url: str, database_url: str, user_rate: float | None) -> None:
        self.setup = setup
        self.redis_url = redis_url
        self.database_url = database_url
        self.user_rate = user_rate
        self.port = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self._sockets: list[socket.socket] = []

    @property
    def base_url(self) -> str:
        """Where wrk and the admin client talk to the service."""
        return f"http://127.0.0.1:{self.port}"

    def _env(self, replica: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            APP_ENV="dev",
            REDIS_URL=self.redis_url,
            FLASHSALE_DATABASE_URL=self.database_url,
            REPLICA_ID=replica,
            LOG_LEVEL="WARNING",  # the app sets the root logger from LOG_LEVEL, whatever --log-level says
            PYTHONUNBUFFERED="1",
        )
        if self.user_rate is not None:
            env["FLASHSALE_USER_RATE_PER_SECOND"] = str(self.user_rate)
        return env

    def _spawn(self, name: str, replica: str, extra: list[str], pass_fds: tuple[int, ...] = ()) -> None:
        launcher = [str(UVICORN_FD)] if pass_fds else ["-m", "uvicorn"]
        cmd = [
            sys.executable,
            *launcher,
            self.APP,
            "--loop",
            "uvloop",
            "--http",
            self.HTTP,
            "--no-access-log",
            "--log-level",
            "warning",
            *self.EXTRA_ARGS,
            *extra,
        ]
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        log_path = RESULTS_DIR / f"{self.LOG_PREFIX}-{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self._env(replica),
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
                start_new_session=True,  # Ctrl-C reaches the benchmark, which then stops the servers in order
            )
        self.procs.append(proc)
        self.logs.append(log_path)

    def start(self) -> None:
        """Start the processes of the setup and wait until they answer."""
        if self.setup == "reuseport":
            self.port = free_port()
            for n in (1, 2):
                sock = _reuseport_socket(self.port)
                self._sockets.append(sock)
                replica = f"bench-{n}"
                self._spawn(replica, replica, ["--fd", str(sock.fileno())], pass_fds=(sock.fileno(),))
        else:
            self.port = free_port()
            extra = ["--host", "127.0.0.1", "--port", str(self.port)]
            if self.setup == "workers":
                # One REPLICA_ID for both workers would make them one stream consumer; leave it empty so
                # each worker names itself host-pid.
                self._spawn("workers", "", [*extra, "--workers", "2"])
            else:
                self._spawn("bench-1", "bench-1", extra)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        # New connection per probe: with SO_REUSEPORT each probe may land on either replica; several
        # successes in a row make it very likely both are up (a late one only delays the warm-up).
        deadline = time.monotonic() + timeout
        streak = 0
        while streak < 10:
            for proc, log in zip(self.procs, self.logs, strict=True):
                if proc.poll() is not None:
                    raise BenchError(f"server exited with {proc.returncode}; log {log}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"server not ready after {timeout:.0f}s; logs: {', '.join(map(str, self.logs))}")
            try:
                r = httpx.get(f"{self.base_url}/healthz/ready", timeout=2.0, headers={"Connection": "close"})
                streak = streak + 1 if r.status_code == 200 else 0
            except httpx.HTTPError:
                streak = 0
            if streak == 0:
                time.sleep(0.2)

    def pids(self) -> list[int]:
        """Process ids of the started processes (workers are found as their children)."""
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        """SIGTERM each started process, then SIGKILL its process group if it does not exit in time."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what we started
                proc.wait(timeout=5)
        for sock in self._sockets:
            sock.close()
        self.procs.clear()
        self._sockets.clear()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def running(servers: Servers) -> Iterator[Servers]:
    """Start the servers; stop them whatever happens (errors, Ctrl-C, SIGTERM)."""
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


# ---------------------------------------------------------------------------- the sale


class Admin:
    """Admin API client (admin token) for seeding sales and reading their stats."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=15.0)

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            resp = self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise BenchError(f"{method} {path} failed: {exc!r}") from exc
        if resp.status_code >= 300:
            raise BenchError(f"{method} {path} -> {resp.status_code}: {resp.text}")
        data: dict[str, Any] = resp.json()
        return data

    def seed_sale(self, tag: str, *, quantity: int = SALE_QUANTITY) -> int:
        """Create a sale (huge unless told) and start it now; returns its id."""
        now = datetime.now(UTC)
        sale = self._call(
            "POST",
            "/admin/sales",
            {
                "sku": f"BENCH-{tag}",
                "title": f"Benchmark sale {tag}",
                "price": 1999,
                "original_price": 2999,
                "currency": "USD",
                "quantity": quantity,
                "per_user_limit": PER_USER_LIMIT,
                "starts_at": now.isoformat(),
                "ends_at": (now + timedelta(hours=2)).isoformat(),
            },
        )
        sale_id = int(sale["id"])
        started = self._call("POST", f"/admin/sales/{sale_id}/start")
        if started.get("state") != "live":
            raise BenchError(f"sale {sale_id} did not go live: {started}")
        return sale_id

    def stats(self, sale_id: int) -> dict[str, Any]:
        """`GET /admin/sales/{id}/stats`."""
        return self._call("GET", f"/admin/sales/{sale_id}/stats")


@dataclass
class Verification:
    """Whether the 202 answers of a purchase run match what the sale recorded."""

    sale_id: int
    answered_202: int
    in_flight_at_stop: int
    reserved: int
    stream_length: int
    ok_attempts: int
    ok: bool
    note: str


def verify_purchases(admin: Admin, redis_url: str, sale_id: int, result: WrkResult) -> Verification:
    """202 answers = reserved units = purchase events; requests wrk abandoned at the stop may add to both."""
    time.sleep(0.5)  # let the servers finish requests wrk left in flight
    stats = admin.stats(sale_id)
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        stream_length = int(client.xlen(f"{{fs:{sale_id}}}:events"))
    except RedisError as exc:
        raise BenchError(f"could not read the event stream of sale {sale_id}: {exc}") from exc
    finally:
        client.close()
    reserved = int(stats["reserved"])
    answered = result.status_202
    extra = reserved - answered
    ok_attempts = int(stats["attempts"].get("ok", 0))
    ok = (
        stream_length == reserved == ok_attempts
        and 0 <= extra <= result.in_flight_at_stop
        and result.status_other_2xx == 0
    )
    if not ok:
        note = (
            f"MISMATCH: {answered} answers 202, reserved {reserved}, stream {stream_length}, "
            f"ok attempts {ok_attempts}, {result.in_flight_at_stop} requests in flight when wrk stopped"
        )
    elif extra == 0:
        note = "exact: 202 answers = reserved = stream length"
    else:
        note = f"{extra} purchase(s) of requests wrk abandoned at the stop (of {result.in_flight_at_stop} in flight)"
    return Verification(
        sale_id=sale_id,
        answered_202=answered,
        in_flight_at_stop=result.in_flight_at_stop,
        reserved=reserved,
        stream_length=stream_length,
        ok_attempts=ok_attempts,
        ok=ok,
        note=note,
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


def write_tokens(users: int, path: Path) -> None:
    """Mint one customer token per user, one per line (the Lua script reads them)."""
    settings = BaseServiceSettings()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for n in range(users):
            out.write(issue_token(settings, f"bench-user-{n:06d}", ["customer"], ttl_seconds=6 * 3600) + "\n")


def measure(
    setup: str,
    opts: Options,
    *,
    wrk: str,
    redis_url: str,
    database_url: str,
    tokens_file: Path,
    admin_token: str,
) -> Measurement:
    """Start the setup, warm up both endpoints, measure trivial then purchase, verify, stop."""
    servers = Servers(setup, redis_url=redis_url, database_url=database_url, user_rate=opts.user_rate)
    with running(servers):
        admin = Admin(servers.base_url, admin_token)
        try:
            probe = CpuProbe(servers.pids(), redis_url)
            run_tag = uuid.uuid4().hex[:8]

            def purchase(label: str, seconds: int) -> tuple[WrkResult, Verification]:
                sale_id = admin.seed_sale(f"{run_tag}-{label}")
                args = [str(sale_id), str(tokens_file), f"{run_tag}{label}"]
                result = run_wrk(
                    wrk,
                    servers.base_url,
                    endpoint="purchase",
                    seconds=seconds,
                    opts=opts,
                    script_args=args,
                    cpu_probe=probe,
                )
                return result, verify_purchases(admin, redis_url, sale_id, result)

            def trivial(seconds: int) -> WrkResult:
                return run_wrk(
                    wrk,
                    servers.base_url,
                    endpoint="trivial",
                    seconds=seconds,
                    opts=opts,
                    script_args=[],
                    cpu_probe=probe,
                )

            warm_check = None
            if opts.warmup:
                print(f"[{setup}] warm-up {opts.warmup}s each (fills the token cache and connection pools)", flush=True)
                trivial(opts.warmup)
                _, warm_check = purchase("w", opts.warmup)
            print(f"[{setup}] measuring {opts.duration}s each: trivial, then purchase, then sold out", flush=True)
            trivial_result = trivial(opts.duration)
            purchase_result, check = purchase("m", opts.duration)
            sold_out_sale = seed_sold_out_sale(admin, servers.base_url, tokens_file, f"{run_tag}-s")

            def sold_out(label: str, seconds: int) -> WrkResult:
                args = [str(sold_out_sale), str(tokens_file), f"{run_tag}{label}"]
                return run_wrk(
                    wrk,
                    servers.base_url,
                    endpoint="purchase",
                    seconds=seconds,
                    opts=opts,
                    script_args=args,
                    cpu_probe=probe,
                )

            if opts.warmup:
                sold_out("sw", min(opts.warmup, 3))
            sold_out_result = sold_out("s", opts.duration)
            time.sleep(0.5)  # let the servers finish requests wrk left in flight
            sold_out_check = verify_sold_out(admin, redis_url, sold_out_sale, sold_out_result)
        finally:
            admin.close()
    return Measurement(setup, trivial_result, purchase_result, check, warm_check, sold_out_result, sold_out_check)


# ---------------------------------------------------------------------------- report


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


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
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print()
    print(f"setup: {describe_setup(m.setup)}")
    print(f"load: wrk -t{opts.threads} -c{opts.connections} -d{opts.duration}s on each, {opts.users:,} users")
    print(_row(header, widths))
    print(_row(["-" * w for w in widths], widths))
    for row in rows:
        print(_row(row, widths))
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


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `running()`, which stops the servers


def run_all(opts: Options, redis_url: str, database_url: str) -> list[Measurement]:
    """Prepare the backends and tokens, then measure each setup (and round) asked for."""
    wrk = ensure_wrk()
    flush_redis(redis_url)
    prepare_database(database_url)
    print(f"database {make_url(database_url).render_as_string()} (recreated), redis {redis_url} (flushed)")
    admin_token = issue_token(BaseServiceSettings(), "bench-admin", ["admin"], ttl_seconds=6 * 3600)
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
                admin_token=admin_token,
            )
            for _ in range(opts.rounds)
            for setup in setups
        ]


def report_header(
    script: str, argv: Sequence[str] | None, load_before: Sequence[float], opts: Options
) -> dict[str, Any]:
    """What every benchmark's JSON report starts with: when, the exact command, the machine and the load."""
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, script, *(argv or sys.argv[1:])]),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "params": {
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "connections": opts.connections,
            "threads": opts.threads,
            "users": opts.users,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when done, 1 on a failure or unverified purchases, 2 on a missed aim with --strict."""
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    load_before = os.getloadavg()
    try:
        redis_url = bench_redis_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), opts.redis_db)
        database_url = bench_database_url(
            os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"), opts.database
        )
        results = run_all(opts, redis_url, database_url)
    except (BenchError, SoldOutPhaseError) as exc:
        print(f"bench_purchase: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_purchase: interrupted; servers stopped", file=sys.stderr)
        return 130
    except SystemExit:
        print("bench_purchase: terminated; servers stopped", file=sys.stderr)
        raise
    for m in results:
        print_table(m, opts)
    # The headline is the last round of the chosen setup; every measurement is in the JSON.
    main_result = [m for m in results if m.setup == opts.setup][-1]
    report = report_header("loadtest/bench_purchase.py", argv, load_before, opts)
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
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(report, indent=2) + "\n")
    shown = opts.output.relative_to(ROOT) if opts.output.is_relative_to(ROOT) else opts.output
    print(f"\nresults written to {shown}")
    if not all(m.verification.ok and (m.sold_out_check is None or m.sold_out_check.ok) for m in results):
        return 1
    missed = main_result.purchase.rps < AIM_PURCHASES_PER_SECOND or main_result.ratio < AIM_RATIO
    return 2 if missed and opts.strict else 0


if __name__ == "__main__":
    sys.exit(main())

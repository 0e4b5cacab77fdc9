"""Starting the servers of a benchmark (flashsale, the gateway, the row-lock baseline) and stopping exactly them.

Setups: `single` (one uvicorn process), `workers` (`uvicorn --workers 2` on one shared socket) and `reuseport`
(two replicas, each uvicorn process with its own SO_REUSEPORT listening socket passed with `--fd`, so the kernel
spreads wrk's connections over them like a load balancer in front of two replicas; loadtest/bench/purchase.py
says why that is the default). Every process runs uvloop, the launcher's coalescing HTTP protocol and no access
log, in its own session, and logs to loadtest/results/<prefix>-<replica>.log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import httpx

from loadtest.bench.errors import BenchError
from loadtest.bench.results import RESULTS_DIR, ROOT

UVICORN_FD = "loadtest.bench.uvicorn_fd"  # uvicorn's CLI, with --fd working for TCP sockets


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


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


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
        self.source = ROOT  # the source tree the processes import the app from
        self.log_prefix = self.LOG_PREFIX

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
        launcher = ["-m", UVICORN_FD] if pass_fds else ["-m", "uvicorn"]
        cmd = [sys.executable, *launcher, self.APP, "--loop", "uvloop", "--http", self.HTTP, "--no-access-log"]
        cmd += ["--log-level", "warning", *self.EXTRA_ARGS, *extra]
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        log_path = RESULTS_DIR / f"{self.log_prefix}-{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=self.source,  # `python -m` puts the working directory first on sys.path
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
        self.port = free_port()
        if self.setup == "reuseport":
            for n in (1, 2):
                sock = _reuseport_socket(self.port)
                self._sockets.append(sock)
                replica = f"bench-{n}"
                self._spawn(replica, replica, ["--fd", str(sock.fileno())], pass_fds=(sock.fileno(),))
        else:
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


class GatewayServers(Servers):
    """The gateway processes, started like flashsale (same flags, same socket setup), in front of `flashsale_url`."""

    APP = "gateway.main:app"
    LOG_PREFIX = "gateway"
    EXTRA_ARGS = ("--no-proxy-headers",)

    def __init__(self, setup: str, *, redis_url: str, flashsale_url: str, source: Path | None = None) -> None:
        super().__init__(setup, redis_url=redis_url, database_url="", user_rate=None)
        self.flashsale_url = flashsale_url
        if source is not None:  # another checkout's gateway (an A/B against an earlier commit)
            self.source = source
            self.log_prefix = f"{self.LOG_PREFIX}-baseline"

    def _env(self, replica: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            APP_ENV="dev",
            REDIS_URL=self.redis_url,
            REPLICA_ID=replica,
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            GATEWAY_FLASHSALE_URLS=self.flashsale_url,
            # Every wrk connection comes from 127.0.0.1: per-IP buckets would measure the limiter, not the path.
            GATEWAY_IP_RATE="1000000000",
            GATEWAY_IP_BURST="1000000000",
            GATEWAY_PURCHASE_IP_RATE="1000000000",
            GATEWAY_PURCHASE_IP_BURST="1000000000",
            GATEWAY_MAX_IN_FLIGHT_PER_POOL="4096",
        )
        return env


@contextlib.contextmanager
def running(servers: Servers) -> Iterator[Servers]:
    """Start the servers; stop them whatever happens (errors, Ctrl-C, SIGTERM)."""
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `running()`, which stops the servers


def stop_servers_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C does, so a terminated benchmark still stops the servers it started."""
    signal.signal(signal.SIGTERM, _on_sigterm)

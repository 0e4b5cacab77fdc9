"""Gateway fixtures: the gateway served in-process on a real port, tiny purpose-built upstreams that count
hits and fail on purpose, and real flashsale replicas on fixed ports (so a restarted one comes back on the
same URL)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from redis.asyncio import Redis

from gateway.config import GatewaySettings
from gateway.main import create_app
from services.common.server import CoalescingHttpProtocol
from tests.conftest import ROOT, TEST_REDIS_URL, PrivateRedis, free_port, redis_url_for

# The gateway's limiter buckets live in a logical DB of this run's own, apart from the services' data.
GATEWAY_REDIS_URL = redis_url_for(2)


async def serve(app: Any, port: int, http: Any = "auto") -> uvicorn.Server:
    """Serve an ASGI app on 127.0.0.1:port in this event loop; returns once it accepts connections."""
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on", http=http
        )
    )
    task = asyncio.create_task(server.serve())
    server.task = task  # type: ignore[attr-defined]
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return server


async def shutdown(server: uvicorn.Server) -> None:
    """Stop a server started by `serve`."""
    server.should_exit = True
    await server.task  # type: ignore[attr-defined]


class Upstream:
    """A tiny upstream: echoes what it received, counts hits, and fails on purpose when told.

    mode: "ok" (200 echo), "503"/"500" (that status), "hang" (answers only once `release` is set),
    "slow" (answers after `delay` seconds), "dependency-down" (503 problem+json with its own code and
    Retry-After, as a service answers when a dependency is out); `ready` False makes /healthz/ready answer 503.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.mode = "ok"
        self.ready = True
        self.delay = 1.0
        self.hits: Counter[str] = Counter()
        self.seen: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.server: uvicorn.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def total(self) -> int:
        """Hits other than health checks."""
        return sum(self.hits.values())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        if path.startswith("/healthz/"):
            status = 200 if self.ready or path == "/healthz/live" else 503
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        self.hits[f"{scope['method']} {path}"] += 1
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append({"method": scope["method"], "path": path, "headers": headers})
        mode = self.mode
        if mode == "dependency-down":
            problem = {"status": 503, "code": "STOCK_UNAVAILABLE", "upstream": self.name}
            out = [(b"content-type", b"application/problem+json"), (b"retry-after", b"1")]
            await send({"type": "http.response.start", "status": 503, "headers": out})
            await send({"type": "http.response.body", "body": orjson.dumps(problem)})
            return
        if mode == "hang":
            await self.release.wait()
        elif mode == "slow":
            await asyncio.sleep(self.delay)
        status = int(mode) if mode.isdigit() else int(headers.get("x-echo-status", "200"))
        answer = {
            "upstream": self.name,
            "method": scope["method"],
            "path": path,
            "query": scope["query_string"].decode(),
            "headers": headers,
            "body": body.decode(),
        }
        out = [(b"content-type", b"application/json"), (b"x-upstream", self.name.encode())]
        if "x-echo-header" in headers:
            out.append((b"x-custom", headers["x-echo-header"].encode()))
        if "x-echo-location" in headers:
            out.append((b"location", headers["x-echo-location"].encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})

    async def start(self) -> Upstream:
        """Listen on its port."""
        self.server = await serve(self, self.port)
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.release.set()
            await shutdown(self.server)
            self.server = None


def dead_url() -> str:
    """A URL where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


def gateway_settings(**overrides: Any) -> GatewaySettings:
    """Gateway settings for tests: fast health checks, generous limits unless a test tightens them."""
    values: dict[str, Any] = {
        "env": "test",
        "redis_url": GATEWAY_REDIS_URL,
        "health_interval": 0.2,
        "health_timeout": 0.5,
        "eject_base_seconds": 0.5,
        "eject_max_seconds": 2.0,
        "user_rate": 10_000,
        "user_burst": 10_000,
        "ip_rate": 100_000,
        "ip_burst": 100_000,
        "purchase_user_rate": 10_000,
        "purchase_user_burst": 10_000,
        "purchase_ip_rate": 100_000,
        "purchase_ip_burst": 100_000,
    }
    for service in ("inventory", "flashsale", "coupon", "order"):
        values[f"{service}_urls"] = dead_url()
    values.update(overrides)
    return GatewaySettings(**values)


class Gateway:
    """A gateway served in this process on a real port."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.port = free_port()
        self.server: uvicorn.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pools(self) -> Any:
        return self.app.proxy.pools


@pytest.fixture
async def start_gateway() -> AsyncIterator[Any]:
    """Start gateways (and stop them after the test): `await start_gateway(**settings_overrides)`."""
    started: list[Gateway] = []

    async def start(**overrides: Any) -> Gateway:
        gateway = Gateway(gateway_settings(**overrides))
        # The protocol the launcher and docker-compose.yml run the gateway with.
        gateway.server = await serve(gateway.app, gateway.port, http=CoalescingHttpProtocol)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.server is not None:
            await shutdown(gateway.server)


@pytest.fixture
async def upstreams() -> AsyncIterator[Any]:
    """Start tiny upstreams (and stop them after the test): `await upstreams("a", "b")`."""
    started: list[Upstream] = []

    async def start(*names: str) -> list[Upstream]:
        out = [await Upstream(name).start() for name in names]
        started.extend(out)
        return out

    yield start
    for upstream in started:
        await upstream.stop()


@pytest.fixture(scope="session", autouse=True)
async def gateway_redis() -> AsyncIterator[None]:
    """Start every run with empty limiter buckets (this run's own logical DB only)."""
    client = Redis.from_url(GATEWAY_REDIS_URL)
    await client.flushdb()
    await client.aclose()
    yield


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client."""
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


class FlashsaleReplicas:
    """Real flashsale uvicorn processes on fixed ports: SIGKILL one, start it again on the same URL."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, *ports: int) -> list[str]:
        """Start replicas (on `ports`, else one on a free port) together; their URLs once all are ready."""
        spawned = [self._spawn(port) for port in ports or (free_port(),)]
        return [self._wait_ready(port) for port in spawned]

    def _spawn(self, port: int) -> int:
        cmd = [sys.executable, "-m", "uvicorn", "services.flashsale.main:app", "--port", str(port)]
        cmd += ["--no-access-log", "--log-level", "warning"]
        env = {
            **os.environ,
            "APP_ENV": "test",
            "LOG_LEVEL": "WARNING",
            "REDIS_URL": TEST_REDIS_URL,
            "FLASHSALE_DATABASE_URL": self.database_url,
            "REPLICA_ID": f"gw-test-{port}",
            "FLASHSALE_CATALOG_REFRESH_SECONDS": "0.2",
        }
        self.procs[port] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        return port

    def _wait_ready(self, port: int) -> str:
        proc = self.procs[port]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz/ready", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flashsale on {url} did not start")
            time.sleep(0.05)

    def kill(self, url: str) -> None:
        """SIGKILL the replica at `url` (no graceful shutdown, connections drop)."""
        proc = self.procs[int(url.rsplit(":", 1)[1])]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        """Terminate every replica still running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def flashsale_replicas(database: str) -> Iterator[FlashsaleReplicas]:
    """A manager of real flashsale replicas sharing this run's Redis and database."""
    replicas = FlashsaleReplicas(database)
    try:
        yield replicas
    finally:
        replicas.stop_all()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A private Redis server, killed at the end if still running."""
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()

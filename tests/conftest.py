"""Shared fixtures: real Redis and PostgreSQL, a migrated test database, the flashsale app in-process,
real uvicorn replicas, a real webhook receiver, and tokens."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from services.common.auth import issue_token
from services.common.migrate import upgrade
from services.flashsale.config import FlashSaleSettings
from services.flashsale.main import create_app

logging.getLogger("httpx").setLevel(logging.WARNING)
ROOT = Path(__file__).resolve().parent.parent
SERVER_URL = os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
# Two runs of the suite on one machine stay apart by choosing other names: TEST_DB_SUFFIX names the
# databases (flashsale<suffix>, orders<suffix>, ...), TEST_REDIS_DB the first of three logical Redis databases.
TEST_DB_SUFFIX = os.environ.get("TEST_DB_SUFFIX", "_test")
TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "9"))


def db_name_for(base: str) -> str:
    """The name of this run's test database for `base` (e.g. flashsale -> flashsale_test)."""
    return f"{base}{TEST_DB_SUFFIX}"


def db_url_for(base: str) -> str:
    """The URL of this run's test database for `base`."""
    return make_url(SERVER_URL).set(database=db_name_for(base)).render_as_string(hide_password=False)


def redis_url_for(offset: int = 0) -> str:
    """A logical Redis database of this run's own (the first, or the one `offset` after it)."""
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
    return f"{base}/{TEST_REDIS_DB + offset}"


TEST_DB_URL = db_url_for("flashsale")
# A logical Redis database of its own, so the suite can start from an empty one.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL") or redis_url_for()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def drop_database(name: str) -> None:
    """Drop a test database (the next migration recreates it)."""
    dsn = make_url(SERVER_URL).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def redis() -> AsyncIterator[Redis]:
    """A client on the test Redis database, emptied once per run."""
    client = Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def database(redis: Redis) -> str:
    """A freshly migrated flashsale test database."""
    await drop_database(db_name_for("flashsale"))
    await asyncio.to_thread(upgrade, "flashsale", TEST_DB_URL)
    return TEST_DB_URL


class WebhookReceiver:
    """A real HTTP server that records every alert POSTed to it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[dict[str, Any]] = []
        self.raw: list[tuple[bytes, str]] = []  # each body as sent, with its signature header
        self.fail_next = 0
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> dict[str, str]:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise RuntimeError("receiver failing on purpose")
            body = await request.body()
            self.raw.append((body, request.headers.get("x-flashsale-signature", "")))
            self.received.append(json.loads(body))
            return {"ok": "yes"}

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def for_sale(self, sale_id: int) -> list[dict[str, Any]]:
        """Alerts received for one sale."""
        return [a for a in self.received if a.get("sale_id") == sale_id]


@asynccontextmanager
async def serving(server: uvicorn.Server) -> AsyncIterator[None]:
    """Run an HTTP server of the test's own on the test's event loop for the length of the block."""
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def webhook() -> AsyncIterator[WebhookReceiver]:
    """The alert webhook receiver, listening on a real port."""
    receiver = WebhookReceiver()
    async with serving(receiver.server):
        yield receiver


@pytest.fixture(scope="session")
def settings(database: str, webhook: WebhookReceiver) -> FlashSaleSettings:
    """Flashsale settings for the in-process app."""
    return FlashSaleSettings(
        env="test",
        database_url=database,
        redis_url=TEST_REDIS_URL,
        alert_webhooks=webhook.url,
        catalog_refresh_seconds=0.2,
        scheduler_interval_seconds=0.1,
        replica_id="test-inproc",
    )


@pytest.fixture(scope="session")
async def app(settings: FlashSaleSettings) -> AsyncIterator[FastAPI]:
    """The flashsale app with its lifespan running (background jobs included)."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the in-process app."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://flashsale") as c:
        yield c


@functools.cache
def _token_settings() -> FlashSaleSettings:
    # Reading the settings from the environment costs ~8 ms; a crowd test signs thousands of tokens.
    return FlashSaleSettings(env="test")


def token(user_id: str, roles: list[str]) -> str:
    """A signed token for the test environment."""
    return issue_token(_token_settings(), user_id, roles)


def admin_headers(user_id: str = "ops-alice") -> dict[str, str]:
    """Headers of an admin."""
    return {"Authorization": f"Bearer {token(user_id, ['admin'])}"}


def customer_headers(user_id: str, key: str | None = None) -> dict[str, str]:
    """Headers of a customer, with an Idempotency-Key when given."""
    headers = {"Authorization": f"Bearer {token(user_id, ['customer'])}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


def sale_body(**overrides: Any) -> dict[str, Any]:
    """A valid sale, open now for an hour, unless overridden."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "sku": "SKU-TEST",
        "title": "Test phone",
        "price": 9_900,
        "original_price": 19_900,
        "quantity": 100,
        "per_user_limit": 2,
        "starts_at": (now - timedelta(seconds=1)).isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(),
        "low_stock_threshold_pct": 0,
    }
    body.update(overrides)
    return body


async def create_sale(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    """Create a sale through the admin API."""
    resp = await client.post("/admin/sales", json=sale_body(**overrides), headers=admin_headers())
    assert resp.status_code == 201, resp.text
    sale: dict[str, Any] = resp.json()
    return sale


async def live_sale(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    """Create and start a sale."""
    sale = await create_sale(client, **overrides)
    resp = await client.post(f"/admin/sales/{sale['id']}/start", headers=admin_headers())
    assert resp.status_code == 200, resp.text
    started: dict[str, Any] = resp.json()
    return started


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


class PrivateRedis:
    """A redis-server of the test's own, so that the test can take it down (SIGKILL) and bring it back.

    With `aof`, it keeps its data in an append-only file fsynced on every write: a restart reloads the data
    under a new run id, as a Redis restarted from its AOF does.
    """

    def __init__(self, *, aof: bool = False) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="private-redis-")
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (reloading its AOF, if any) and wait until it answers."""
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", ""]
        cmd += ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout != b"PONG\n":
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL it: every client's connections drop at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


class Processes:
    """Real uvicorn processes started by a test, stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, app: str, env: dict[str, str], port: int | None = None) -> str:
        """Start one uvicorn process of `app` (on `port`, else a free one); its base URL once it answers
        /healthz/live."""
        port = port or free_port()
        cmd = [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--no-access-log", "--log-level", "warning"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "APP_ENV": "test", "LOG_LEVEL": "WARNING", **env})
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz/live", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{app} on {url} did not start")
            time.sleep(0.1)

    def stop_all(self) -> None:
        """Terminate everything started, then wait for it."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def order_processes(db_base: str, *replica_envs: dict[str, str]) -> Iterator[list[str]]:
    """Real order processes, one per environment given, on a freshly migrated order database of their own
    (`db_base`, e.g. orders_lp) and the test Redis; their base URLs. Stopped on exit."""
    asyncio.run(drop_database(db_name_for(db_base)))
    upgrade("order", db_url_for(db_base))
    procs = Processes()
    shared = {"ORDER_DATABASE_URL": db_url_for(db_base), "REDIS_URL": TEST_REDIS_URL}
    try:
        yield [procs.start("services.order.main:app", {**shared, **env}) for env in replica_envs]
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def replicas(database: str) -> Iterator[list[str]]:
    """Two real uvicorn replicas of flashsale sharing the test Redis and database."""
    procs = Processes()
    try:
        urls = [
            procs.start(
                "services.flashsale.main:app",
                {"REDIS_URL": TEST_REDIS_URL, "FLASHSALE_DATABASE_URL": database, "REPLICA_ID": f"test-replica-{n}"},
            )
            for n in (1, 2)
        ]
        for url in urls:
            while httpx.get(f"{url}/healthz/ready", timeout=2).status_code != 200:
                time.sleep(0.1)
        yield urls
    finally:
        procs.stop_all()


@dataclass(frozen=True)
class PaySims:
    """Base URLs of the running payment providers."""

    primary: str
    backup: str

    @property
    def urls(self) -> dict[str, str]:
        """Provider name -> base URL."""
        return {"primary": self.primary, "backup": self.backup}


@pytest.fixture(scope="session")
def paysim() -> Iterator[PaySims]:
    """The payment simulator as a primary and a backup process."""
    procs = Processes()
    try:
        yield PaySims(*(procs.start("services.paysim.main:app", {"PAYSIM_NAME": n}) for n in ("primary", "backup")))
    finally:
        procs.stop_all()


async def sale_stats(client: httpx.AsyncClient, sale_id: int) -> dict[str, Any]:
    """The admin stats of a sale (read straight from Redis, no storefront cache)."""
    resp = await client.get(f"/admin/sales/{sale_id}/stats", headers=admin_headers())
    assert resp.status_code == 200, resp.text
    stats: dict[str, Any] = resp.json()
    return stats


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The browser tests run last: Playwright's sync API holds the event loop the session's in-process apps
    (flashsale, its alert relay, the webhook receiver) run on, for as long as each browser test runs; the apps'
    Redis reads time out meanwhile and their alerts arrive late for the tests that follow."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/console/"))

"""The lifespan every service runs (real Redis and PostgreSQL): what start-up opened is closed again, jobs
stop before anything they use closes, and every close runs even when one fails."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.common.config import BaseServiceSettings
from services.common.lifespan import Every, Job, ServiceRuntime, Start, service_lifespan
from services.common.streams import StreamConsumer, encode_event
from tests.conftest import TEST_REDIS_URL


class StartUpFailed(Exception):
    """What the tests' start-up raises half-way."""


class Recorder:
    """Something a service opens and closes (a client, a relay): its close lands on the timeline."""

    def __init__(self, name: str, timeline: list[str], *, fails: bool = False) -> None:
        self.name = name
        self.timeline = timeline
        self.fails = fails

    async def aclose(self) -> None:
        self.timeline.append(f"close {self.name}")
        if self.fails:
            raise RuntimeError(f"{self.name} would not close")


class OpenedConnections:
    """The runtime's own Redis and PostgreSQL connections, as the servers list them."""

    def __init__(self, probe: Redis, database_url: str) -> None:
        self.probe = probe
        self.database_url = database_url
        self.client_name = f"lifespan-{uuid.uuid4().hex[:8]}"
        self.backend_pids: list[int] = []

    def settings(self) -> BaseServiceSettings:
        return BaseServiceSettings(
            env="test",
            redis_url=f"{TEST_REDIS_URL}?client_name={self.client_name}",
            redis_max_connections=4,
            database_url=self.database_url,
        )

    async def redis(self) -> int:
        return sum(1 for c in await self.probe.client_list() if c.get("name") == self.client_name)

    async def record_database(self, runtime: ServiceRuntime) -> None:
        """Check out one pooled PostgreSQL connection and note its server process."""
        async with runtime.state.sessions() as session:
            self.backend_pids.append((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())

    async def database(self) -> int:
        """How many of the recorded server processes are still connected."""
        dsn = make_url(self.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", self.backend_pids)
        finally:
            await conn.close()
        return len(rows)


def app_with(settings: BaseServiceSettings, start: Start) -> FastAPI:
    return FastAPI(lifespan=service_lifespan(settings, start))


async def test_a_start_up_that_fails_half_way_closes_what_it_opened_and_fails(redis: Redis, database: str) -> None:
    opened = OpenedConnections(redis, database)
    timeline: list[str] = []
    during_start: dict[str, int] = {}

    async def start(runtime: ServiceRuntime) -> list[Job]:
        runtime.open_database()
        await runtime.open_redis()
        await opened.record_database(runtime)
        runtime.closing(Recorder("client", timeline))
        during_start["redis"] = await opened.redis()
        raise StartUpFailed("catalog unreadable")

    app = app_with(opened.settings(), start)
    with pytest.raises(StartUpFailed, match="catalog unreadable"):
        async with app.router.lifespan_context(app):
            pytest.fail("a service whose start-up failed must not serve")

    assert during_start["redis"] == 4  # the pool was warmed...
    assert await opened.redis() == 0  # ...and no connection of it is left on the server
    assert await opened.database() == 0
    assert timeline == ["close client"]


async def test_shutdown_stops_every_job_then_flushes_then_closes_last_opened_first(redis: Redis, database: str) -> None:
    opened = OpenedConnections(redis, database)
    timeline: list[str] = []
    stream = f"test:lifespan:{uuid.uuid4().hex}"
    handled = asyncio.Event()

    async def tick() -> None:
        timeline.append("tick")

    async def listen() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            timeline.append("listener stopped")

    async def on_event(entry_id: str, fields: dict[str, Any]) -> None:
        handled.set()

    async def flush() -> None:
        timeline.append("flush")

    async def start(runtime: ServiceRuntime) -> list[Job]:
        runtime.open_database()
        client = await runtime.open_redis()
        await opened.record_database(runtime)
        runtime.closing(Recorder("first client", timeline))
        runtime.closing(Recorder("second client", timeline))
        runtime.flush_at_shutdown(flush)
        consumer = StreamConsumer(
            redis=client, stream=stream, group="lifespan", consumer="replica-1", handler=on_event, block_ms=20
        )
        return [Every(0.005, "tick", tick), listen, consumer]

    app = app_with(opened.settings(), start)
    async with app.router.lifespan_context(app):
        await redis.xadd(stream, encode_event("thing.happened", {"n": 1}))
        await asyncio.wait_for(handled.wait(), timeout=10)
        while timeline.count("tick") < 3:
            await asyncio.sleep(0.01)
        assert await opened.redis() > 0

    stopped = timeline.index("listener stopped")
    assert "tick" not in timeline[stopped:]  # no job ran once shutdown began
    assert timeline[stopped:] == ["listener stopped", "flush", "close second client", "close first client"]
    assert await opened.redis() == 0
    assert await opened.database() == 0


async def test_every_close_runs_when_one_fails_and_that_failure_is_raised(
    redis: Redis, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    opened = OpenedConnections(redis, database)
    timeline: list[str] = []

    async def flush() -> None:
        raise ConnectionError("Redis went first")

    async def start(runtime: ServiceRuntime) -> list[Job]:
        runtime.open_database()
        await runtime.open_redis()
        await opened.record_database(runtime)
        runtime.closing(Recorder("notifier", timeline))
        runtime.closing(Recorder("relay", timeline, fails=True))
        runtime.closing(Recorder("payments", timeline))
        runtime.flush_at_shutdown(flush)
        return []

    app = app_with(opened.settings(), start)
    with caplog.at_level(logging.WARNING, logger="service.lifespan"), pytest.raises(RuntimeError, match="relay"):
        async with app.router.lifespan_context(app):
            pass

    assert "flush at shutdown failed" in caplog.text  # logged; the closes still ran
    assert timeline == ["close payments", "close relay", "close notifier"]
    assert await opened.redis() == 0
    assert await opened.database() == 0

"""`service_lifespan(settings, start)`: the start-up and shutdown every service runs around its own objects.

A service's `start(runtime)` opens what it needs through the runtime (the engine, Redis, its own objects
and clients), in the order they depend on each other, and returns the jobs it runs. The runtime then
starts the jobs, freezes start-up objects for the garbage collector and serves. Shutdown, and a start-up
that fails half-way, go back the same way: jobs stop first, flushes run next, then everything opened
closes in reverse order, every step even when an earlier one fails.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import State

from services.common.auth import TokenVerifier
from services.common.background import freeze_startup_objects, run_every, stop_background
from services.common.config import BaseServiceSettings
from services.common.resources import RedisClient, open_engine, open_redis, session_factory, warm_redis
from services.common.streams import StreamConsumer

log = logging.getLogger("service.lifespan")


@dataclass(frozen=True)
class Every:
    """A periodic job: `job` every `seconds` until shutdown, right away again when `again_now(result)` says so."""

    seconds: float
    name: str
    job: Callable[[], Awaitable[object]]
    again_now: Callable[[object], bool] | None = None


# A job is periodic (Every), a stream consumer (asked to stop after its batch, then cancelled), or any other
# long-running coroutine, such as a listener (cancelled).
Job = Every | StreamConsumer | Callable[[], Coroutine[Any, Any, None]]
Start = Callable[["ServiceRuntime"], Awaitable[Sequence[Job]]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


class AsyncClosable(Protocol):
    """Anything with `aclose()`: a client, a relay, a notifier."""

    async def aclose(self) -> None: ...


Closable = TypeVar("Closable", bound=AsyncClosable)


class ServiceRuntime:
    """What one service process opened, in order, and the jobs it runs; `aclose` undoes it all.

    Routers and readiness find what they use on `state` (the app's): `redis`, `engine` and `sessions`
    are set here, the service's own objects by its `start`.
    """

    def __init__(self, app: FastAPI, settings: BaseServiceSettings) -> None:
        self.settings = settings
        self.state: State = app.state
        self._closing = AsyncExitStack()
        self._flushes: list[Callable[[], Awaitable[object]]] = []
        self._stop = asyncio.Event()
        self._consumers: list[StreamConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def stopping(self) -> asyncio.Event:
        """Set when shutdown begins: a long-running job of its own watches it and returns."""
        return self._stop

    def open_database(self, *, pre_ping: bool = True) -> async_sessionmaker[AsyncSession]:
        """The process's engine (disposed at shutdown) and its session factory."""
        engine = open_engine(self.settings, pre_ping=pre_ping)
        self.on_shutdown(engine.dispose)
        self.state.engine = engine
        self.state.sessions = sessions = session_factory(engine)
        return sessions

    async def open_redis(self) -> RedisClient:
        """The process's Redis pool, warmed before any traffic and closed at shutdown."""
        redis = open_redis(self.settings)
        self.on_shutdown(redis.aclose)
        await warm_redis(redis, self.settings)
        self.state.redis = redis
        return redis

    def closing(self, resource: Closable) -> Closable:
        """`resource`, closed at shutdown before anything opened ahead of it."""
        self.on_shutdown(resource.aclose)
        return resource

    def on_shutdown(self, close: Callable[[], object]) -> None:
        """Run `close` (a function or a coroutine function) at shutdown, after the jobs stopped and the
        flushes ran, before anything registered ahead of it."""

        async def run() -> None:
            result = close()
            if inspect.isawaitable(result):
                await result

        self._closing.push_async_callback(run)

    def flush_at_shutdown(self, flush: Callable[[], Awaitable[object]]) -> None:
        """Run `flush` once the jobs stopped, while everything is still open; a failure is logged, not raised.

        What a flush saves (counts kept in memory) is worth one try, not a shutdown that never closes its
        pools because Redis is gone.
        """
        self._flushes.append(flush)

    def run(self, jobs: Sequence[Job]) -> None:
        """Start the jobs, one task each."""
        for job in jobs:
            if isinstance(job, StreamConsumer):
                self._consumers.append(job)
            self._tasks.append(asyncio.create_task(self._coroutine_of(job)))

    def _coroutine_of(self, job: Job) -> Coroutine[Any, Any, None]:
        if isinstance(job, Every):
            return run_every(job.seconds, job.name, job.job, self._stop, again_now=job.again_now)
        if isinstance(job, StreamConsumer):
            return job.run()
        return job()

    async def aclose(self) -> None:
        """Stop the jobs (waiting a bounded time), run the flushes, then close everything, last opened first.

        Each close runs even when one before it failed; the failure is raised once all have run.
        """
        try:
            for consumer in self._consumers:
                consumer.stop()
            await stop_background(self._stop, self._tasks)
            for flush in self._flushes:
                try:
                    await flush()
                except Exception:
                    log.warning("flush at shutdown failed", exc_info=True)
        finally:
            await self._closing.aclose()


def service_lifespan(settings: BaseServiceSettings, start: Start, *, verify_tokens: bool = True) -> Lifespan:
    """The lifespan of a service: `start` opens what it needs and returns its jobs; the rest is the same
    for every service.

    With `verify_tokens`, `state.token_verifier` checks bearer tokens by the settings' rules (the gateway
    builds its own verifier with the app).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ServiceRuntime(app, settings)
        try:
            if verify_tokens:
                app.state.token_verifier = TokenVerifier(settings)
            runtime.run(await start(runtime))
            freeze_startup_objects()
            yield
        finally:
            await runtime.aclose()

    return lifespan

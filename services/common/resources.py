"""Process-wide Redis pool and SQLAlchemy engine, opened once in the lifespan."""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.common.config import BaseServiceSettings

log = logging.getLogger(__name__)


def open_redis(settings: BaseServiceSettings) -> Redis:
    """One connection pool per process, strings in and out.

    A blocking pool: past `REDIS_MAX_CONNECTIONS` a request waits (up to 5 s) for a free connection
    instead of failing, so a burst queues briefly rather than turning into errors.
    """
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        decode_responses=True,
        max_connections=settings.redis_max_connections,
        timeout=5,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
    return Redis(connection_pool=pool)


async def warm_redis(redis: Redis, settings: BaseServiceSettings) -> int:
    """Open `REDIS_WARM_CONNECTIONS` of the pool's connections now (call it before any traffic); how many opened.

    A replica that starts (or joins mid-sale) with an empty pool would open one connection per request of
    its first burst, on an event loop that burst keeps busy: connects then wait on the loop, time out
    (`socket_connect_timeout`), and each failed one is retried by the next request, so the burst never gets
    ahead. Opened at start, they are there before traffic (until Redis or the network drops them; then they
    reconnect on demand). A failure is logged, not raised: the service starts anyway and connects on demand,
    as it does after Redis comes back.
    """
    pool = redis.connection_pool
    wanted = settings.redis_warm_connections
    connections = pool.max_connections if wanted is None else min(wanted, pool.max_connections)
    opened: list[AbstractConnection] = []

    async def open_one() -> None:
        opened.append(await pool.get_connection())  # type: ignore[no-untyped-call]

    try:
        results = await asyncio.gather(*(open_one() for _ in range(connections)), return_exceptions=True)
    finally:
        # Also when start-up is cancelled: what opened goes back to the pool, none stays checked out.
        for conn in opened:
            await pool.release(conn)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        log.warning(
            "opened %d of %d Redis connections at start: %s: %s",
            len(opened),
            connections,
            type(failures[0]).__name__,
            failures[0],
        )
    return len(opened)


def open_engine(settings: BaseServiceSettings, *, pre_ping: bool = True) -> AsyncEngine:
    """One asyncpg-backed engine per process.

    `pre_ping` checks each connection as it leaves the pool (asyncpg: BEGIN, a ping, ROLLBACK: three round
    trips per checkout); without it a connection PostgreSQL dropped fails the one statement sent on it, and
    that failure recycles every pooled connection older than it.

    The pool hands out the connection returned last (LIFO): asyncpg prepares a statement, and looks up the
    types it uses, once per connection, so a burst served by the few connections that just did the same work
    skips those round trips, where a round-robin over the whole pool pays them on every cold connection.
    """
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_use_lifo=True,
        pool_pre_ping=pre_ping,
        pool_timeout=settings.db_pool_timeout_seconds,
        connect_args={"timeout": 5, "command_timeout": 10},
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)

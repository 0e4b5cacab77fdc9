"""Process-wide Redis pool and SQLAlchemy engine, opened once in the lifespan."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.common.config import BaseServiceSettings


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


def open_engine(settings: BaseServiceSettings) -> AsyncEngine:
    """One asyncpg-backed engine per process."""
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        pool_timeout=5,
        connect_args={"timeout": 5, "command_timeout": 10},
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)

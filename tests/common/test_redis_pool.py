"""The services' Redis pool opened at start (real Redis): a burst finds its connections there."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis

from services.common.config import BaseServiceSettings
from services.common.resources import open_redis, warm_redis
from tests.conftest import TEST_REDIS_URL, free_port


async def _connections_named(redis: Redis, name: str) -> int:
    clients = await redis.client_list()
    return sum(1 for c in clients if c.get("name") == name)


@pytest.mark.parametrize(("warm", "expected"), [(None, 12), (5, 5), (0, 0), (50, 12)])
async def test_start_opens_the_configured_number_of_connections(redis: Redis, warm: int | None, expected: int) -> None:
    name = f"warm-test-{warm}"
    settings = BaseServiceSettings(
        redis_url=f"{TEST_REDIS_URL}?client_name={name}", redis_max_connections=12, redis_warm_connections=warm
    )
    pool_client = open_redis(settings)
    try:
        assert await warm_redis(pool_client, settings) == expected
        # Open on the server, and idle in the pool for the first requests to take.
        assert await _connections_named(redis, name) == expected
        # A burst as large as what was opened uses those connections and opens none of its own.
        assert all(await asyncio.gather(*(pool_client.ping() for _ in range(expected))))
        assert await _connections_named(redis, name) == expected
    finally:
        await pool_client.aclose()


async def test_redis_down_at_start_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    settings = BaseServiceSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_max_connections=4)
    pool_client = open_redis(settings)
    try:
        with caplog.at_level(logging.WARNING, logger="services.common.resources"):
            assert await warm_redis(pool_client, settings) == 0
        assert "opened 0 of 4 Redis connections at start" in caplog.text
    finally:
        await pool_client.aclose()

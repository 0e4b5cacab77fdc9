"""The services' Redis pool opened at start (real Redis): a burst finds its connections there."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis

from services.common.config import BaseServiceSettings
from services.common.resources import open_redis, warm_redis
from tests.conftest import TEST_REDIS_URL, free_port


async def _connections_named(redis: Redis, name: str) -> set[str]:
    """The server's ids of the connections with this client name."""
    return {c["id"] for c in await redis.client_list() if c.get("name") == name}


@pytest.mark.parametrize(("warm", "expected"), [(None, 12), (5, 5), (0, 0), (50, 12)])
async def test_start_opens_the_configured_number_of_connections(redis: Redis, warm: int | None, expected: int) -> None:
    name = f"warm-test-{warm}"
    settings = BaseServiceSettings(
        redis_url=f"{TEST_REDIS_URL}?client_name={name}", redis_max_connections=12, redis_warm_connections=warm
    )
    pool_client = open_redis(settings)
    try:
        assert await warm_redis(pool_client, settings) == expected
        # Open on the server before any request, and idle in the pool for the first requests to take.
        opened = await _connections_named(redis, name)
        assert len(opened) == expected
        # A burst as large as what was opened runs on exactly those connections.
        assert all(await asyncio.gather(*(pool_client.ping() for _ in range(expected))))
        assert await _connections_named(redis, name) == opened
    finally:
        await pool_client.aclose()


async def test_redis_down_at_start_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    settings = BaseServiceSettings(redis_url=f"redis://127.0.0.1:{port}/0", redis_max_connections=4)
    pool_client = open_redis(settings)
    try:
        with caplog.at_level(logging.WARNING, logger="services.common.resources"):
            assert await warm_redis(pool_client, settings) == 0
        assert "opened 0 of 4 Redis connections at start: ConnectionError: " in caplog.text
        assert f"connecting to 127.0.0.1:{port}" in caplog.text  # the cause, not only the error's class
    finally:
        await pool_client.aclose()

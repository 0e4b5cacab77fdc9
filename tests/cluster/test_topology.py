"""One setting, both topologies: REDIS_URL at any node of a cluster opens the cluster client; a single Redis
keeps its blocking pool."""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from services.common.cluster_script_pipe import ClusterScriptPipe
from services.common.config import BaseServiceSettings
from services.common.resources import open_redis, open_script_pipe, warm_redis
from services.common.script_pipe import ScriptPipe
from tests.cluster.conftest import LoopbackCluster
from tests.conftest import TEST_REDIS_URL, free_port, redis_url_for

# The run's single Redis, database 0: a URL a cluster client would accept.
REDIS_URL = redis_url_for(-int(TEST_REDIS_URL.rsplit("/", 1)[1]))


@pytest.mark.parametrize("node", [0, 1, 2])
async def test_redis_url_at_any_master_reads_and_writes_keys_of_every_master(
    clean_cluster: LoopbackCluster, node: int
) -> None:
    settings = BaseServiceSettings(redis_url=clean_cluster.masters[node].url)
    client = open_redis(settings)
    try:
        assert isinstance(client, RedisCluster)
        keys = clean_cluster.keys_on_each_master("topology:")
        for n, key in enumerate(keys):
            await client.set(key, f"value-{n}")
        assert [await client.get(key) for key in keys] == ["value-0", "value-1", "value-2"]
        # Each key is stored by the master of its slot, not by the node the URL names.
        for n, (key, master) in enumerate(zip(keys, clean_cluster.masters, strict=True)):
            with master.client() as conn:
                assert conn.get(key) == f"value-{n}"
    finally:
        await client.aclose()


async def test_a_single_redis_keeps_the_blocking_pool(redis: Redis) -> None:
    client = open_redis(BaseServiceSettings(redis_url=TEST_REDIS_URL))
    try:
        assert not isinstance(client, RedisCluster)
        assert isinstance(client.connection_pool, BlockingConnectionPool)
        assert await client.ping()
    finally:
        await client.aclose()


async def test_the_explicit_setting_wins_over_what_the_node_would_answer(clean_cluster: LoopbackCluster) -> None:
    client = open_redis(BaseServiceSettings(redis_url=clean_cluster.url, redis_cluster="no"))
    try:
        assert not isinstance(client, RedisCluster)
    finally:
        await client.aclose()
    pipe = open_script_pipe(clean_cluster.url, "return 1", cluster="no", call_timeout=1, connect_timeout=1)
    assert type(pipe) is ScriptPipe
    pipe = open_script_pipe(REDIS_URL, "return 1", cluster="yes", call_timeout=1, connect_timeout=1)
    assert type(pipe) is ClusterScriptPipe


async def test_script_pipes_follow_the_topology_of_their_url(clean_cluster: LoopbackCluster) -> None:
    assert type(open_script_pipe(clean_cluster.url, "return 1", call_timeout=1, connect_timeout=1)) is (
        ClusterScriptPipe
    )
    assert type(open_script_pipe(TEST_REDIS_URL, "return 1", call_timeout=1, connect_timeout=1)) is ScriptPipe


async def test_warm_opens_the_configured_connections_to_every_master(clean_cluster: LoopbackCluster) -> None:
    name = "cluster-warm-test"
    settings = BaseServiceSettings(
        redis_url=f"{clean_cluster.url}?client_name={name}", redis_max_connections=8, redis_warm_connections=5
    )
    client = open_redis(settings)
    try:
        assert await warm_redis(client, settings) == 15
        named = []
        for master in clean_cluster.masters:
            with master.client() as conn:
                named.append(sum(1 for c in conn.client_list() if c.get("name") == name))
        # Five warmed on each master, and the one that asked for the slot map on the node the URL names.
        assert sorted(named) == [5, 5, 6]
    finally:
        await client.aclose()


def test_a_cluster_url_naming_another_database_is_refused(clean_cluster: LoopbackCluster) -> None:
    with pytest.raises(ValueError, match="database 0 only"):
        open_redis(BaseServiceSettings(redis_url=clean_cluster.url.replace("/0", "/3")))
    with pytest.raises(ValueError, match="database 0 only"):
        open_script_pipe(clean_cluster.url.replace("/0", "/3"), "return 1", call_timeout=1, connect_timeout=1)


async def test_a_cluster_down_at_start_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    settings = BaseServiceSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_cluster="yes")
    client = open_redis(settings)
    try:
        with caplog.at_level(logging.WARNING, logger="services.common.resources"):
            assert await warm_redis(client, settings) == 0
        assert "opened 0 of" in caplog.text
    finally:
        await client.aclose()


async def test_a_node_that_cannot_be_asked_is_taken_as_a_single_redis(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.WARNING, logger="services.common.topology"):
        client = open_redis(BaseServiceSettings(redis_url=url))
    try:
        assert not isinstance(client, RedisCluster)
        assert "using it as a single Redis" in caplog.text
        assert "secret" not in caplog.text
    finally:
        await client.aclose()

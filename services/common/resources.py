"""Process-wide Redis clients (a single Redis or a Redis Cluster) and SQLAlchemy engine, opened once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import parse_url
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.common.cluster_script_pipe import ClusterScriptPipe
from services.common.config import BaseServiceSettings
from services.common.script_pipe import ScriptPipe
from services.common.topology import ClusterMode, uses_cluster

log = logging.getLogger(__name__)

# Either client, as code that works on both topologies takes it.
RedisClient: TypeAlias = Redis | RedisCluster
# Connection options of both: strings in and out, the same timeouts on a single node and on every cluster node.
_CONNECTION_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_timeout": 5,
    "socket_connect_timeout": 2,
    "health_check_interval": 30,
}


def open_redis(settings: BaseServiceSettings) -> RedisClient:
    """The process's Redis client: a blocking pool on a single Redis, the cluster client on a Redis Cluster.

    Which one follows REDIS_CLUSTER (services.common.topology). What a cluster refuses (keys of several
    slots in one command) is answered at run time with CROSSSLOT; docs/scaling.md gives every key family a
    slot plan so that it does not happen.
    """
    if uses_cluster(settings.redis_url, settings.redis_cluster):
        return open_redis_cluster(settings)
    # A blocking pool: past `REDIS_MAX_CONNECTIONS` a request waits (up to 5 s) for a free connection
    # instead of failing, so a burst queues briefly rather than turning into errors. The client owns the
    # pool: its `aclose()` disconnects every pooled connection (a client built on a pool passed in leaves them).
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.redis_max_connections, timeout=5, **_CONNECTION_OPTIONS
    )
    return Redis.from_pool(pool)


def open_redis_cluster(settings: BaseServiceSettings) -> RedisCluster:
    """redis-py's cluster client on the cluster whose node REDIS_URL names.

    Up to `REDIS_MAX_CONNECTIONS` connections per master (past them a command fails with MaxConnectionsError
    rather than waiting); reads and writes go to masters only (replicas may lag: stock is never read from
    one). Slots a failed master held fail on their own (the others keep serving) instead of the client
    refusing the whole cluster. A command that meets a lost connection is retried a few times, the slot map
    refreshed in between, so a failover costs the calls of its few seconds, not the client.
    """
    if int(parse_url(settings.redis_url).get("db") or 0):  # type: ignore[no-untyped-call]
        raise ValueError("a Redis Cluster has database 0 only: REDIS_URL must name /0")
    return RedisCluster.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        require_full_coverage=False,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3),
        **_CONNECTION_OPTIONS,
    )


def open_script_pipe(
    url: str,
    script: str,
    *,
    cluster: ClusterMode = "auto",
    call_timeout: float,
    connect_timeout: float,
    decode: bool = False,
    wait_replicas: int = 0,
    wait_timeout_ms: int = 0,
) -> ScriptPipe | ClusterScriptPipe:
    """A pipe running `script` on the Redis `url` names: one connection, or one per master of a cluster; with
    `wait_replicas`, each call is answered once that many replicas of its master have its writes."""
    pipe_class = ClusterScriptPipe if uses_cluster(url, cluster) else ScriptPipe
    return pipe_class(
        url,
        script,
        call_timeout=call_timeout,
        connect_timeout=connect_timeout,
        decode=decode,
        wait_replicas=wait_replicas,
        wait_timeout_ms=wait_timeout_ms,
    )


async def ping_redis(redis: RedisClient) -> None:
    """Raise unless Redis can serve this process's data: on a cluster, every master answers (each holds part
    of it) and the cluster reports every slot served."""
    if not isinstance(redis, RedisCluster):
        await redis.ping()
        return
    await redis.ping(target_nodes=RedisCluster.PRIMARIES)
    state = (await redis.cluster_info()).get("cluster_state")
    if state != "ok":
        raise ClusterDownError(f"cluster_state:{state}")


async def redis_run_id(redis: RedisClient, key: str) -> str:
    """The run id of the Redis server holding `key` (a new one after every restart of that server).

    On a cluster that is the master of the key's slot: another master's restart says nothing about it.
    """
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # the slot map, if no command has asked for it yet (a no-op after)
        node = redis.get_node_from_key(key)
        info: dict[str, Any] = await redis.info("server", target_nodes=node)
    else:
        info = await redis.info("server")
    return str(info.get("run_id", ""))


async def warm_redis(redis: RedisClient, settings: BaseServiceSettings) -> int:
    """Open `REDIS_WARM_CONNECTIONS` of the pool's connections now (call it before any traffic); how many opened.

    A replica that starts (or joins mid-sale) with an empty pool would open one connection per request of
    its first burst, on an event loop that burst keeps busy: connects then wait on the loop, time out
    (`socket_connect_timeout`), and each failed one is retried by the next request, so the burst never gets
    ahead. Opened at start, they are there before traffic (until Redis or the network drops them; then they
    reconnect on demand). On a cluster that many are opened to each master, once the slot map is known.
    A failure is logged, not raised: the service starts anyway and connects on demand, as it does after
    Redis comes back.
    """
    if isinstance(redis, RedisCluster):
        return await _warm_cluster(redis, settings.redis_warm_connections)
    pool = redis.connection_pool
    wanted = settings.redis_warm_connections
    connections = pool.max_connections if wanted is None else min(wanted, pool.max_connections)
    opened: list[AbstractConnection] = []

    async def open_one() -> None:
        opened.append(await pool.get_connection())  # type: ignore[no-untyped-call]

    try:
        failures = await _open_all([open_one] * connections)
    finally:
        # Also when start-up is cancelled: what opened goes back to the pool, none stays checked out.
        for conn in opened:
            await pool.release(conn)
    _log_failures(failures, len(opened), connections)
    return len(opened)


async def _warm_cluster(redis: RedisCluster, wanted: int | None) -> int:
    try:
        await redis.initialize()
    except (RedisError, RedisClusterException, OSError) as exc:
        _log_failures([exc], 0, wanted or 0)
        return 0
    taken: list[tuple[ClusterNode, Connection]] = []
    for node in redis.get_primaries():
        count = node.max_connections if wanted is None else min(wanted, node.max_connections)
        taken += [(node, node.acquire_connection()) for _ in range(count)]
    try:
        failures = await _open_all([conn.connect for _node, conn in taken])
    finally:
        for node, conn in taken:
            node.release(conn)
    _log_failures(failures, len(taken) - len(failures), len(taken))
    return len(taken) - len(failures)


async def _open_all(openers: list[Callable[[], Awaitable[None]]]) -> list[BaseException]:
    """Run every opener at once; the failures."""
    results = await asyncio.gather(*(open_one() for open_one in openers), return_exceptions=True)
    return [r for r in results if isinstance(r, BaseException)]


def _log_failures(failures: list[BaseException], opened: int, wanted: int) -> None:
    if failures:
        log.warning(
            "opened %d of %d Redis connections at start: %s: %s",
            opened,
            wanted,
            type(failures[0]).__name__,
            failures[0],
        )


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

"""Whether REDIS_URL names a single Redis or a node of a Redis Cluster: one setting serves both topologies.

`REDIS_CLUSTER=yes|no` says it; `auto` (the default) asks the node (`INFO cluster`) the first time a URL is
opened in the process, and every later client for that URL (the redis-py client, each script pipe) gets the
same answer. A node that cannot be asked (down at start) is taken as a single Redis and the process logs it:
a cluster deployment sets `REDIS_CLUSTER=yes` so that a cluster still starting up is never taken for one.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from redis import ConnectionPool
from redis import Redis as SyncRedis
from redis.connection import parse_url
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

ClusterMode = Literal["auto", "yes", "no"]

# The answers of the nodes asked so far, by URL: a process asks each node once.
_answers: dict[str, bool] = {}


def uses_cluster(url: str, mode: ClusterMode, *, timeout: float = 2.0) -> bool:
    """Whether clients for `url` must speak Redis Cluster: the setting when explicit, else the node's answer.

    Asked at start, before any traffic (a blocking call of at most `timeout` seconds).
    """
    if mode != "auto":
        return mode == "yes"
    known = _answers.get(url)
    if known is not None:
        return known
    try:
        # Asked on database 0 whatever the URL names: a cluster node refuses SELECT.
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        options.update(db=0, socket_connect_timeout=timeout, socket_timeout=timeout)
        pool = ConnectionPool(**options)
        try:
            enabled = bool(int(SyncRedis(connection_pool=pool).info("cluster").get("cluster_enabled", 0)))
        finally:
            pool.disconnect()
    except (RedisError, OSError, ValueError) as exc:
        log.warning(
            "REDIS_CLUSTER=auto: could not ask %s whether it is a cluster node (%s: %s); using it as a single Redis",
            _without_password(url),
            type(exc).__name__,
            exc,
        )
        return False
    _answers[url] = enabled
    return enabled


def _without_password(url: str) -> str:
    """The URL as it may be logged: the part before `@` (credentials) dropped."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"

"""Every gateway worker's view of the upstream pools, shared through Redis for `GET /admin/upstreams`.

Each worker process keeps its own pools: its own health checks, passive ejections and breakers. A request
to `/admin/upstreams` reaches one worker of one gateway, so on its own it would show that worker's view
only. Every worker therefore writes its view to Redis every `GATEWAY_VIEW_INTERVAL_SECONDS` (one field per
worker of the hash `{gw}:views`: one key, so on a Redis Cluster one master holds every view and one HGETALL
reads them all), and the endpoint answers with all of them plus, per replica, in how many workers it is
available, unhealthy, ejected or behind an open breaker. A view older than three intervals is a dead
worker's: it is left out and its field deleted (a hash field has no expiry of its own).
A failed publish is logged and tried again next interval: the admin view never stops the proxy path.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from gateway.pools import Pool, monotonic
from services.common.resources import RedisClient

# Hash: worker name -> its last view (JSON, with the time it was reported).
VIEWS_KEY = "{gw}:views"


def worker_name(replica_id: str) -> str:
    """This worker's name: the gateway replica, the process, and a suffix for gateways sharing a process."""
    return f"{replica_id or 'gateway'}/{os.getpid()}-{uuid.uuid4().hex[:4]}"


def local_view(worker: str, pools: Iterable[Pool]) -> dict[str, Any]:
    """This worker's pools as the admin view shows them."""
    now = monotonic()
    return {"worker": worker, "reported_at": time.time(), "pools": [pool.status(now) for pool in pools]}


class ViewPublisher:
    """Writes this worker's view to Redis; reads every worker's."""

    def __init__(self, redis: RedisClient, worker: str, pools: dict[str, Pool], interval: float) -> None:
        self.redis = redis
        self.worker = worker
        self.pools = pools
        self.interval = interval
        self.max_age = interval * 3  # a view older than this is a dead worker's
        self.ttl_ms = max(1, int(self.max_age * 1000))

    async def publish(self) -> None:
        """Write the view once (run_every calls it each interval; a failure is retried next time)."""
        view = local_view(self.worker, self.pools.values())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(VIEWS_KEY, self.worker, orjson.dumps(view))
            pipe.pexpire(VIEWS_KEY, self.ttl_ms)  # the hash goes once no worker writes any more
            await pipe.execute()

    async def all_views(self) -> list[dict[str, Any]]:
        """Every live worker's last view but this one's (the caller has this one as of now)."""
        raw: dict[Any, Any] = await self.redis.hgetall(VIEWS_KEY)
        oldest = time.time() - self.max_age
        views, dead = [], []
        for field, value in raw.items():
            worker = field.decode() if isinstance(field, bytes) else str(field)
            if worker == self.worker:
                continue
            view = orjson.loads(value)
            if float(view.get("reported_at", 0)) < oldest:
                dead.append(worker)
            else:
                views.append(view)
        if dead:
            await self.redis.hdel(VIEWS_KEY, *dead)
        return views


def summarize(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per replica: how many workers see it, and in how many it is available, unhealthy, ejected, breaker-open."""
    by_replica: dict[tuple[str, str], dict[str, Any]] = {}
    for view in views:
        for pool in view["pools"]:
            for replica in pool["replicas"]:
                entry = by_replica.setdefault(
                    (pool["pool"], replica["url"]),
                    {
                        "pool": pool["pool"],
                        "url": replica["url"],
                        "tier": replica["tier"],
                        "workers": 0,
                        "available_in": 0,
                        "unhealthy_in": 0,
                        "ejected_in": 0,
                        "breaker_open_in": 0,
                    },
                )
                entry["workers"] += 1
                entry["available_in"] += bool(replica["available"])
                entry["unhealthy_in"] += not replica["healthy"]
                entry["ejected_in"] += bool(replica["ejected"])
                entry["breaker_open_in"] += replica["breaker"]["state"] == "open"
    return list(by_replica.values())

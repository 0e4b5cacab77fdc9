"""Gateway admin endpoints (admin role): the state of every upstream pool, as every gateway worker sees it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from redis.exceptions import RedisClusterException, RedisError

from gateway.pools import Pool
from gateway.schemas import UpstreamsOut
from gateway.views import ViewPublisher, local_view, summarize
from services.common.auth import AdminUser

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/upstreams", response_model=UpstreamsOut)
async def upstreams(request: Request, _admin: AdminUser) -> UpstreamsOut:
    """Each pool with its replicas (health, passive ejections, breaker state, requests in flight) as the worker
    that answers sees it, every live worker's view (published to Redis every few seconds), and per replica in
    how many workers it is available, unhealthy, ejected or behind an open breaker."""
    pools: dict[str, Pool] = request.app.state.pools
    own = local_view(request.app.state.worker, pools.values())
    views: list[dict[str, Any]] = [own]
    error = None
    publisher: ViewPublisher | None = getattr(request.app.state, "view_publisher", None)
    if publisher is not None:
        try:
            views += await publisher.all_views()
        except (RedisError, RedisClusterException, OSError) as exc:  # the cluster client's outages included
            error = f"other workers' views unavailable: {type(exc).__name__}"
    return UpstreamsOut(
        worker=own["worker"], pools=own["pools"], workers=views, replicas=summarize(views), workers_error=error
    )

"""Gateway admin endpoints (admin role): the state of every upstream pool."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.pools import Pool, monotonic
from gateway.schemas import UpstreamsOut
from services.common.auth import AdminUser

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/upstreams", response_model=UpstreamsOut)
async def upstreams(request: Request, _admin: AdminUser) -> UpstreamsOut:
    """Each pool with its replicas: health, passive ejections, breaker state, requests in flight."""
    pools: dict[str, Pool] = request.app.state.pools
    now = monotonic()
    return UpstreamsOut(pools=[pool.status(now) for pool in pools.values()])

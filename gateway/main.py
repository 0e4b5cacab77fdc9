"""API gateway: `uvicorn gateway.main:app --port 8000`."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from gateway import admin, router
from gateway.auth import EdgeTokenVerifier
from gateway.config import GatewaySettings
from gateway.console import console_router
from gateway.console_live import ConsoleLiveSettings, live_router, start_live_hub
from gateway.metrics import POOLS
from gateway.pools import HealthChecker, build_pools
from gateway.proxy import Proxy
from gateway.ratelimit import RateLimiter
from gateway.views import ViewPublisher, worker_name
from services.common.defaults import service_app
from services.common.lifespan import Every, Job, ServiceRuntime, service_lifespan
from services.common.resources import open_redis

log = logging.getLogger("gateway")

PROXY_PREFIX = "/api/"
OWN_PREFIX = "/api/auth/"


class GatewayApp:
    """The ASGI entry point: `/api/<service>/...` goes straight to the proxy, the rest to the FastAPI app."""

    def __init__(self, api: FastAPI, proxy: Proxy) -> None:
        self.api = api
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI call."""
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(PROXY_PREFIX) and not path.startswith(OWN_PREFIX):
                await self.proxy(scope, receive, send)
                return
        await self.api(scope, receive, send)


def create_app(settings: GatewaySettings | None = None) -> GatewayApp:
    """Build the gateway: the proxy path plus a FastAPI app for health, metrics, admin and demo tokens."""
    settings = settings or GatewaySettings()
    pools = build_pools(settings)
    verifier = EdgeTokenVerifier(settings)
    proxy = Proxy(settings, pools, verifier)

    worker = worker_name(settings.replica_id)
    live = ConsoleLiveSettings()

    async def start(runtime: ServiceRuntime) -> list[Job]:
        # A few connections, not warmed: upstream views make one call per interval and per admin read, and the
        # rate limiter has its own pipe. open_redis gives the cluster client on a Redis Cluster.
        views_redis = runtime.closing(open_redis(settings.model_copy(update={"redis_max_connections": 4})))
        limiter = runtime.closing(RateLimiter(settings))
        runtime.on_shutdown(close_pools)
        POOLS.watch(pools)
        proxy.limiter = limiter
        runtime.state.view_publisher = publisher = ViewPublisher(
            views_redis, worker, pools, settings.view_interval_seconds
        )
        start_live_hub(settings, live, runtime, views_redis, pools)
        return [
            HealthChecker(pools, settings).run,
            Every(settings.view_interval_seconds, "upstream view", publisher.publish),
        ]

    def close_pools() -> None:
        proxy.limiter = None
        POOLS.forget(pools)
        for pool in pools.values():
            pool.close()

    api = service_app(
        settings,
        title="gateway",
        description="The single entry point: routing, failover, auth at the edge, rate limits, load shedding.",
        lifespan=service_lifespan(settings, start, verify_tokens=False),
        public_prefix="",
    )
    api.state.settings = settings
    api.state.pools = pools
    api.state.worker = worker
    api.state.token_verifier = verifier
    api.include_router(admin.router)
    api.include_router(live_router(settings, live))
    api.include_router(console_router(settings))
    if settings.dev_tokens:
        api.include_router(router.router)
        log.warning("GATEWAY_DEV_TOKENS is on: POST /api/auth/token mints tokens for anyone (dev/test only)")
    return GatewayApp(api, proxy)


app = create_app()

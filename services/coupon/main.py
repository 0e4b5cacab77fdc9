"""Coupon service: `uvicorn services.coupon.main:app`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common.auth import TokenVerifier
from services.common.background import freeze_startup_objects, run_every, stop_background
from services.common.defaults import service_app
from services.common.resources import open_engine, open_redis, session_factory, warm_redis
from services.coupon import admin, router
from services.coupon.config import CouponSettings
from services.coupon.events import ClaimPersistence, order_events_consumer
from services.coupon.recovery import RedisRecovery
from services.coupon.service import CouponService


def create_app(settings: CouponSettings | None = None) -> FastAPI:
    """Build the coupon app; resources and background consumers start in the lifespan."""
    settings = settings or CouponSettings()
    replica = settings.consumer_name

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = open_redis(settings)
        await warm_redis(redis, settings)
        engine = open_engine(settings)
        sessions = session_factory(engine)
        service = CouponService(settings=settings, redis=redis, sessions=sessions)
        claims = ClaimPersistence(service, replica)
        orders = order_events_consumer(service, replica)
        recovery = RedisRecovery(service, replica)
        app.state.redis, app.state.engine, app.state.sessions = redis, engine, sessions
        app.state.service, app.state.token_verifier = service, TokenVerifier(settings)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(run_every(1.0, "claim stream discovery", claims.follower.sync, stop)),
            asyncio.create_task(orders.run()),
            asyncio.create_task(run_every(settings.restore_interval_seconds, "redis recovery", recovery.run, stop)),
            asyncio.create_task(
                run_every(settings.stale_lock_sweep_seconds, "stale lock sweep", recovery.sweep_stale_locks, stop)
            ),
        ]
        freeze_startup_objects()
        try:
            yield
        finally:
            orders.stop()
            await stop_background(stop, tasks)
            await claims.follower.aclose()
            await redis.aclose()
            await engine.dispose()

    app = service_app(
        settings,
        title="coupon",
        description="Coupon templates, race-proof claims, wallets, quotes with stacking rules, order locks.",
        lifespan=lifespan,
        redis_down_code="COUPON_UNAVAILABLE",
        # PostgreSQL down: claims go on (decided in Redis, written to the wallets from the claim streams later);
        # wallet, quote and order locks answer 503 until it is back. Redis down: templates, wallets and quotes
        # (PostgreSQL) go on; claims answer 503 COUPON_UNAVAILABLE.
        serves_without=frozenset({"postgres", "redis"}),
    )
    app.include_router(router.router)
    app.include_router(admin.router)
    return app


app = create_app()

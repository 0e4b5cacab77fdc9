"""Coupon service: `uvicorn services.coupon.main:app`."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.contracts import CLAIM_STREAM_REGISTRY
from services.common.defaults import service_app
from services.common.lifespan import Every, Job, ServiceRuntime, service_lifespan
from services.common.stream_backlog import GAUGE_SECONDS, registered_streams, stream_gauges_job
from services.coupon import admin, router
from services.coupon.config import CouponSettings
from services.coupon.events import ClaimPersistence, order_events_consumer
from services.coupon.recovery import RedisRecovery
from services.coupon.service import CouponService


def create_app(settings: CouponSettings | None = None) -> FastAPI:
    """Build the coupon app; resources and background consumers start in the lifespan."""
    settings = settings or CouponSettings()
    replica = settings.consumer_name

    async def start(runtime: ServiceRuntime) -> list[Job]:
        sessions = runtime.open_database()
        redis = await runtime.open_redis()
        runtime.state.service = service = CouponService(settings=settings, redis=redis, sessions=sessions)
        claims = ClaimPersistence(service, replica)
        runtime.closing(claims.follower)
        recovery = RedisRecovery(service, replica)

        async def claim_streams() -> set[str]:
            return await registered_streams(redis, CLAIM_STREAM_REGISTRY)

        return [
            Every(1.0, "claim stream discovery", claims.follower.sync),
            order_events_consumer(service, replica),
            Every(settings.restore_interval_seconds, "redis recovery", recovery.run),
            Every(settings.stale_lock_sweep_seconds, "stale lock sweep", recovery.sweep_stale_locks),
            Every(GAUGE_SECONDS, "stream gauges", stream_gauges_job(redis, claim_streams, reporter="coupon")),
        ]

    app = service_app(
        settings,
        title="coupon",
        description="Coupon templates, race-proof claims, wallets, quotes with stacking rules, order locks.",
        lifespan=service_lifespan(settings, start),
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

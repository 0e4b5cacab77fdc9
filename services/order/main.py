"""Order service: `uvicorn services.order.main:app`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common.auth import TokenVerifier
from services.common.background import freeze_startup_objects, probe_loop_lag, run_every, stop_background
from services.common.defaults import service_app
from services.common.resources import open_engine, open_redis, session_factory, warm_redis
from services.common.streams import trim_acknowledged
from services.order import admin, router
from services.order.config import OrderSettings
from services.order.coupons import CouponClient
from services.order.events import PurchaseIngest
from services.order.idempotency import OrderIdempotency
from services.order.payments import PaymentRouter
from services.order.service import OrderService

log = logging.getLogger("order")


def create_app(settings: OrderSettings | None = None) -> FastAPI:
    """Build the order app; resources and background jobs start in the lifespan."""
    settings = settings or OrderSettings()
    replica = settings.consumer_name

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = open_redis(settings)
        await warm_redis(redis, settings)
        engine = open_engine(settings, pre_ping=settings.db_pre_ping)
        sessions = session_factory(engine)
        payments = PaymentRouter(
            primary_url=settings.paysim_primary_url,
            backup_url=settings.paysim_backup_url,
            timeout_s=settings.payment_timeout_seconds,
            failure_threshold=settings.breaker_failure_threshold,
            reset_timeout_s=settings.breaker_reset_seconds,
        )
        coupons = CouponClient(settings)
        service = OrderService(settings=settings, redis=redis, sessions=sessions, payments=payments, coupons=coupons)
        ingest = PurchaseIngest(service, replica)
        app.state.redis, app.state.engine, app.state.sessions = redis, engine, sessions
        app.state.service, app.state.ingest, app.state.payments = service, ingest, payments
        app.state.token_verifier = TokenVerifier(settings)
        app.state.idempotency = idempotency = OrderIdempotency(engine)
        stop = asyncio.Event()
        full = settings.relay_batch
        tasks = [
            asyncio.create_task(probe_loop_lag(stop)),
            asyncio.create_task(
                run_every(
                    settings.idempotency_sweep_seconds, "idempotency record sweep", idempotency.sweep_expired, stop
                )
            ),
            asyncio.create_task(run_every(settings.stream_discovery_seconds, "stream discovery", ingest.sync, stop)),
            asyncio.create_task(
                run_every(settings.sweeper_interval_seconds, "expiry sweeper", service.expire_due, stop)
            ),
            asyncio.create_task(
                run_every(settings.pricing_retry_interval_seconds, "coupon pricing", service.price_with_coupons, stop)
            ),
            asyncio.create_task(
                run_every(
                    settings.duplicate_check_interval_seconds,
                    "duplicate charge check",
                    service.refunds.refund_duplicate_charges,
                    stop,
                )
            ),
            asyncio.create_task(
                run_every(
                    settings.claim_check_interval_seconds,
                    "payment claim check",
                    service.refunds.settle_stale_claims,
                    stop,
                )
            ),
            asyncio.create_task(
                run_every(
                    settings.refund_interval_seconds, "closed order refunds", service.refunds.refund_closed_orders, stop
                )
            ),
            asyncio.create_task(
                run_every(
                    settings.stream_trim_seconds,
                    "order events trim",
                    lambda: trim_acknowledged(
                        redis,
                        settings.events_stream,
                        required_groups=[g.strip() for g in settings.events_stream_groups.split(",") if g.strip()],
                    ),
                    stop,
                )
            ),
            asyncio.create_task(
                run_every(
                    settings.relay_interval_seconds,
                    "outbox relay",
                    service.relay_outbox,
                    stop,
                    again_now=lambda n: n == full,
                )
            ),
        ]
        freeze_startup_objects()
        try:
            yield
        finally:
            await stop_background(stop, tasks)
            await ingest.aclose()
            await payments.aclose()
            await coupons.aclose()
            await redis.aclose()
            await engine.dispose()

    app = service_app(
        settings,
        title="order",
        description="Orders from flash-sale reservations: payment with failover, timeouts, refunds, outbox events.",
        lifespan=lifespan,
        # Redis down: every HTTP route goes on (orders and the Idempotency-Key records of pay and cancel are in
        # PostgreSQL); new orders wait in the purchase streams and order events in the outbox.
        serves_without=frozenset({"redis"}),
    )
    app.include_router(router.router)
    app.include_router(admin.router)
    return app


app = create_app()

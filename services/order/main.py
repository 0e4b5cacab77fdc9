"""Order service: `uvicorn services.order.main:app`."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.background import probe_loop_lag
from services.common.defaults import service_app
from services.common.lifespan import Every, Job, ServiceRuntime, service_lifespan
from services.common.stream_backlog import registered_streams, stream_gauges_job
from services.common.streams import trim_acknowledged
from services.order import admin, router
from services.order.config import OrderSettings
from services.order.coupons import CouponClient
from services.order.events import PurchaseIngest
from services.order.idempotency import OrderIdempotency
from services.order.metrics import refresh_outbox_gauges
from services.order.payments import PaymentRouter
from services.order.service import OrderService


def create_app(settings: OrderSettings | None = None) -> FastAPI:
    """Build the order app; resources and background jobs start in the lifespan."""
    settings = settings or OrderSettings()
    replica = settings.consumer_name
    event_groups = [g.strip() for g in settings.events_stream_groups.split(",") if g.strip()]

    async def start(runtime: ServiceRuntime) -> list[Job]:
        sessions = runtime.open_database(pre_ping=settings.db_pre_ping)
        redis = await runtime.open_redis()
        coupons = runtime.closing(CouponClient(settings))
        payments = runtime.closing(
            PaymentRouter(
                primary_url=settings.paysim_primary_url,
                backup_url=settings.paysim_backup_url,
                timeout_s=settings.payment_timeout_seconds,
                failure_threshold=settings.breaker_failure_threshold,
                reset_timeout_s=settings.breaker_reset_seconds,
            )
        )
        service = OrderService(settings=settings, redis=redis, sessions=sessions, payments=payments, coupons=coupons)
        ingest = runtime.closing(PurchaseIngest(service, replica))
        idempotency = OrderIdempotency(runtime.state.engine)
        state = runtime.state
        state.service, state.ingest, state.payments, state.idempotency = service, ingest, payments, idempotency
        full = settings.relay_batch

        async def watched_streams() -> list[str]:
            # The purchase streams it reads and the events stream it writes (read by flashsale and coupon).
            return [*await registered_streams(redis, settings.purchase_stream_registry), settings.events_stream]

        refunds = service.refunds
        return [
            lambda: probe_loop_lag(runtime.stopping),
            Every(settings.idempotency_sweep_seconds, "idempotency record sweep", idempotency.sweep_expired),
            Every(settings.stream_discovery_seconds, "stream discovery", ingest.sync),
            Every(settings.sweeper_interval_seconds, "expiry sweeper", service.expire_due),
            Every(settings.pricing_retry_interval_seconds, "coupon pricing", service.price_with_coupons),
            Every(
                settings.duplicate_check_interval_seconds, "duplicate charge check", refunds.refund_duplicate_charges
            ),
            Every(settings.claim_check_interval_seconds, "payment claim check", refunds.settle_stale_claims),
            Every(settings.refund_interval_seconds, "closed order refunds", refunds.refund_closed_orders),
            Every(
                settings.stream_trim_seconds,
                "order events trim",
                lambda: trim_acknowledged(redis, settings.events_stream, required_groups=event_groups),
            ),
            Every(settings.relay_interval_seconds, "outbox relay", service.relay_outbox, again_now=lambda n: n == full),
            Every(
                settings.gauge_interval_seconds,
                "stream gauges",
                stream_gauges_job(redis, watched_streams, reporter="order"),
            ),
            Every(settings.gauge_interval_seconds, "outbox gauges", lambda: refresh_outbox_gauges(sessions)),
        ]

    app = service_app(
        settings,
        title="order",
        description="Orders from flash-sale reservations: payment with failover, timeouts, refunds, outbox events.",
        lifespan=service_lifespan(settings, start),
        # Redis down: every HTTP route goes on (orders and the Idempotency-Key records of pay and cancel are in
        # PostgreSQL); new orders wait in the purchase streams and order events in the outbox.
        serves_without=frozenset({"redis"}),
    )
    app.include_router(router.router)
    app.include_router(admin.router)
    return app


app = create_app()

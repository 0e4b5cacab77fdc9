"""Flashsale service: `uvicorn services.flashsale.main:app`."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from starlette.routing import Route

from services.common.defaults import service_app
from services.common.lifespan import Every, Job, ServiceRuntime, service_lifespan
from services.common.stream_backlog import stream_gauges_job
from services.flashsale import admin, router
from services.flashsale.briefings import Briefings
from services.flashsale.config import FlashSaleSettings
from services.flashsale.events import AlertRelay, WebhookNotifier, listen_notifications, order_events_consumer
from services.flashsale.metrics import alert_streams, refresh_stock_gauges
from services.flashsale.reconciliation import SaleReconciler
from services.flashsale.service import FlashSaleService

log = logging.getLogger("flashsale")


def create_app(settings: FlashSaleSettings | None = None) -> FastAPI:
    """Build the flashsale app; resources open in the lifespan."""
    settings = settings or FlashSaleSettings()
    replica = settings.consumer_name

    async def start(runtime: ServiceRuntime) -> list[Job]:
        sessions = runtime.open_database()
        redis = await runtime.open_redis()
        service = runtime.closing(FlashSaleService(settings=settings, redis=redis, sessions=sessions))
        notifier = runtime.closing(
            WebhookNotifier(settings.webhook_urls, settings.webhook_signing_key, settings.webhook_max_attempts)
        )
        relay = runtime.closing(AlertRelay(service, notifier, replica))
        runtime.flush_at_shutdown(service.flush_local_attempts)
        reconciler = SaleReconciler(service)
        briefings = Briefings(service.core, notifier)
        state = runtime.state
        state.service, state.notifier, state.alert_relay, state.reconciler = service, notifier, relay, reconciler
        state.briefings = briefings
        try:
            await service.refresh_catalog()
        except Exception:
            log.warning("catalog not loaded at start; will retry", exc_info=True)

        async def refresh() -> None:
            await service.refresh_catalog()
            relay.sync()

        return [
            Every(settings.catalog_refresh_seconds, "catalog refresh", refresh),
            Every(settings.scheduler_interval_seconds, "scheduler", service.run_schedule_tick),
            Every(1.0, "attempt flush", service.flush_local_attempts),
            Every(settings.stock_gauge_seconds, "stock gauges", lambda: refresh_stock_gauges(service.core)),
            Every(
                settings.stock_gauge_seconds,
                "stream gauges",
                stream_gauges_job(redis, lambda: alert_streams(service.core), reporter="flashsale"),
            ),
            Every(settings.allocation_sync_seconds, "settlement", reconciler.settle),
            Every(settings.reconcile_interval_seconds, "reconciliation", reconciler.reconcile_periodically),
            Every(settings.briefing_check_seconds, "sale briefings", briefings.brief_live_sales),
            lambda: listen_notifications(service),
            order_events_consumer(service, replica),
        ]

    app = service_app(
        settings,
        title="flashsale",
        description="Flash sales: storefront views, the atomic purchase, and the admin lifecycle.",
        lifespan=service_lifespan(settings, start),
        redis_down_code="STOCK_UNAVAILABLE",
        # PostgreSQL down: the storefront (catalog in memory) and purchases (Redis) go on; only admin waits.
        # Redis down: the sale list goes on from the catalog; purchases and live stock answer 503 STOCK_UNAVAILABLE.
        serves_without=frozenset({"postgres", "redis"}),
    )

    app.include_router(router.router)
    # Numeric sale ids take the plain route first; the FastAPI route documents it and answers the rest.
    app.router.routes.insert(
        0, Route("/sales/{sale_id:int}/purchase", router.purchase_hot_path, methods=["POST"], name="purchase_hot")
    )
    app.include_router(admin.router)
    return app


app = create_app()

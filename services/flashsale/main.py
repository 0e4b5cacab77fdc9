"""Flashsale service: `uvicorn services.flashsale.main:app`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from starlette.routing import Route

from services.common.auth import TokenVerifier
from services.common.background import freeze_startup_objects, run_every, stop_background
from services.common.defaults import service_app
from services.common.resources import open_engine, open_redis, session_factory, warm_redis
from services.common.streams import StreamConsumer
from services.flashsale import admin, router
from services.flashsale.config import FlashSaleSettings
from services.flashsale.events import AlertRelay, WebhookNotifier, handle_order_event, listen_notifications
from services.flashsale.reconciliation import SaleReconciler
from services.flashsale.service import FlashSaleService

log = logging.getLogger("flashsale")


def create_app(settings: FlashSaleSettings | None = None) -> FastAPI:
    """Build the flashsale app; resources open in the lifespan."""
    settings = settings or FlashSaleSettings()
    replica = settings.consumer_name

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = open_redis(settings)
        await warm_redis(redis, settings)
        engine = open_engine(settings)
        sessions = session_factory(engine)
        service = FlashSaleService(settings=settings, redis=redis, sessions=sessions)
        notifier = WebhookNotifier(settings.webhook_urls, settings.webhook_signing_key, settings.webhook_max_attempts)
        relay = AlertRelay(service, notifier, replica)
        app.state.redis, app.state.engine, app.state.sessions = redis, engine, sessions
        app.state.service, app.state.notifier, app.state.alert_relay = service, notifier, relay
        app.state.token_verifier = TokenVerifier(settings)
        reconciler = SaleReconciler(service)
        app.state.reconciler = reconciler
        try:
            await service.refresh_catalog()
        except Exception:
            log.warning("catalog not loaded at start; will retry", exc_info=True)

        async def refresh() -> None:
            await service.refresh_catalog()
            relay.sync()

        order_events = StreamConsumer(
            redis=redis,
            stream=settings.order_events_stream,
            group="flashsale",
            consumer=replica,
            handler=lambda entry_id, fields: handle_order_event(service, entry_id, fields),
            claim_idle_ms=10_000,
        )
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(run_every(settings.catalog_refresh_seconds, "catalog refresh", refresh, stop)),
            asyncio.create_task(
                run_every(settings.scheduler_interval_seconds, "scheduler", service.run_schedule_tick, stop)
            ),
            asyncio.create_task(run_every(1.0, "attempt flush", service.flush_local_attempts, stop)),
            asyncio.create_task(run_every(settings.allocation_sync_seconds, "settlement", reconciler.settle, stop)),
            asyncio.create_task(
                run_every(
                    settings.reconcile_interval_seconds, "reconciliation", reconciler.reconcile_periodically, stop
                )
            ),
            asyncio.create_task(listen_notifications(service)),
            asyncio.create_task(order_events.run()),
        ]
        freeze_startup_objects()
        try:
            yield
        finally:
            order_events.stop()
            await stop_background(stop, tasks)
            await relay.aclose()
            with suppress(Exception):
                await service.flush_local_attempts()
            await notifier.aclose()
            await service.aclose()
            await redis.aclose()
            await engine.dispose()

    app = service_app(
        settings,
        title="flashsale",
        description="Flash sales: storefront views, the atomic purchase, and the admin lifecycle.",
        lifespan=lifespan,
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

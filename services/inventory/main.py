"""Inventory service: `uvicorn services.inventory.main:app --port 8101`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common.auth import TokenVerifier
from services.common.background import freeze_startup_objects, run_every, stop_background
from services.common.defaults import service_app
from services.common.resources import open_engine, open_redis, session_factory, warm_redis
from services.inventory import admin, router
from services.inventory.allocations import Allocations
from services.inventory.config import InventorySettings
from services.inventory.holds import Holds
from services.inventory.ledger import StockLedger
from services.inventory.reconciliation import Reconciler
from services.inventory.reminders import Replenishment
from services.inventory.skus import Skus


def create_app(settings: InventorySettings | None = None) -> FastAPI:
    """Build the inventory app; resources and the periodic jobs (hold sweeper, alert relay, replenishment
    reminders, reconciliation) start in the lifespan."""
    settings = settings or InventorySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = open_redis(settings)
        await warm_redis(redis, settings)
        engine = open_engine(settings)
        sessions = session_factory(engine)
        ledger = StockLedger(settings=settings, redis=redis, sessions=sessions)
        holds, reconciler = Holds(ledger), Reconciler(ledger)
        app.state.redis, app.state.engine, app.state.sessions = redis, engine, sessions
        app.state.ledger, app.state.skus, app.state.allocations = ledger, Skus(ledger), Allocations(ledger)
        app.state.holds, app.state.reconciler, app.state.replenishment = holds, reconciler, Replenishment(sessions)
        app.state.token_verifier = TokenVerifier(settings)
        stop = asyncio.Event()
        batch = settings.sweep_batch
        relay_batch = settings.alert_relay_batch
        jobs = [
            asyncio.create_task(
                run_every(
                    settings.sweep_interval_seconds,
                    "hold sweeper",
                    holds.expire_due_holds,
                    stop,
                    again_now=lambda n: isinstance(n, int) and n >= batch,
                )
            ),
            asyncio.create_task(
                run_every(
                    settings.alert_relay_interval_seconds,
                    "alert relay",
                    ledger.relay.relay_once,
                    stop,
                    again_now=lambda n: isinstance(n, int) and n >= relay_batch,
                )
            ),
            asyncio.create_task(
                run_every(settings.reminder_check_seconds, "replenishment reminders", ledger.relay.remind_due, stop)
            ),
            asyncio.create_task(
                run_every(settings.reconcile_interval_seconds, "reconciliation", reconciler.reconcile_tick, stop)
            ),
        ]
        freeze_startup_objects()
        try:
            yield
        finally:
            await stop_background(stop, jobs)
            await reconciler.release_leadership()
            await ledger.relay.aclose()
            await redis.aclose()
            await engine.dispose()

    app = service_app(
        settings,
        title="inventory",
        description="Warehouse stock ledger, allocations to sales, checkout holds, low-stock alerts, reconciliation.",
        lifespan=lifespan,
        redis_down_code="INVENTORY_UNAVAILABLE",
        # Availability reads the Redis mirror, PostgreSQL when the mirror is out, so it goes on without either;
        # holds and admin answer 503 until both are back.
        serves_without=frozenset({"postgres", "redis"}),
    )
    app.include_router(router.router)
    app.include_router(admin.router)
    return app


app = create_app()

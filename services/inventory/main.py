"""Inventory service: `uvicorn services.inventory.main:app --port 8101`."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.defaults import service_app
from services.common.lifespan import Every, Job, ServiceRuntime, service_lifespan
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
    batch = settings.sweep_batch
    relay_batch = settings.alert_relay_batch

    async def start(runtime: ServiceRuntime) -> list[Job]:
        sessions = runtime.open_database()
        redis = await runtime.open_redis()
        ledger = StockLedger(settings=settings, redis=redis, sessions=sessions)
        holds, reconciler = Holds(ledger), Reconciler(ledger)
        state = runtime.state
        state.ledger, state.skus, state.allocations = ledger, Skus(ledger), Allocations(ledger)
        state.holds, state.reconciler, state.replenishment = holds, reconciler, Replenishment(sessions)
        runtime.closing(ledger.relay)
        runtime.on_shutdown(reconciler.release_leadership)
        return [
            Every(
                settings.sweep_interval_seconds,
                "hold sweeper",
                holds.expire_due_holds,
                again_now=lambda n: isinstance(n, int) and n >= batch,
            ),
            Every(
                settings.alert_relay_interval_seconds,
                "alert relay",
                ledger.relay.relay_once,
                again_now=lambda n: isinstance(n, int) and n >= relay_batch,
            ),
            Every(settings.reminder_check_seconds, "replenishment reminders", ledger.relay.remind_due),
            Every(settings.reconcile_interval_seconds, "reconciliation", reconciler.reconcile_tick),
        ]

    app = service_app(
        settings,
        title="inventory",
        description="Warehouse stock ledger, allocations to sales, checkout holds, low-stock alerts, reconciliation.",
        lifespan=service_lifespan(settings, start),
        redis_down_code="INVENTORY_UNAVAILABLE",
        # Availability reads the Redis mirror, PostgreSQL when the mirror is out, so it goes on without either;
        # holds and admin answer 503 until both are back.
        serves_without=frozenset({"postgres", "redis"}),
    )
    app.include_router(router.router)
    app.include_router(admin.router)
    return app


app = create_app()

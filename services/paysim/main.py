"""Paysim, a mock payment provider with fault injection: `PAYSIM_NAME=primary uvicorn services.paysim.main:app`."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from fastapi import FastAPI

from services.common.defaults import service_app
from services.common.lifespan import Job, ServiceRuntime, service_lifespan
from services.paysim import admin, router
from services.paysim.config import PaySimSettings
from services.paysim.errors import ProviderDown
from services.paysim.faults import FaultState
from services.paysim.ledger import PaymentLedger

log = logging.getLogger("paysim")


def create_app(settings: PaySimSettings | None = None) -> FastAPI:
    """Build one paysim provider; payments live in this process's memory (no Redis, no database)."""
    settings = settings or PaySimSettings()

    async def start(runtime: ServiceRuntime) -> list[Job]:
        runtime.state.ledger = PaymentLedger(provider=settings.name, max_payments=settings.max_payments)
        runtime.state.faults = FaultState(provider=settings.name)
        runtime.state.audit = deque[dict[str, Any]](maxlen=settings.audit_size)
        log.info("paysim provider %s started", settings.name)
        return []

    async def provider_up() -> None:
        # A "down" provider keeps answering health probes but leaves the pool, as a gateway would see it.
        if app.state.faults.down:
            raise ProviderDown("down by fault injection")

    app = service_app(
        settings,
        title=f"paysim ({settings.name})",
        description="A mock payment provider with fault injection for failover drills.",
        lifespan=service_lifespan(settings, start),
        ready_checks={"provider": provider_up},
        public_prefix="",  # a provider of its own, called directly (not through the gateway)
    )
    app.include_router(router.router)
    app.include_router(admin.router)
    return app


app = create_app()

"""Paysim, a mock payment provider with fault injection: `PAYSIM_NAME=primary uvicorn services.paysim.main:app`."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from services.common.auth import TokenVerifier
from services.common.defaults import service_app
from services.paysim import admin, router
from services.paysim.config import PaySimSettings
from services.paysim.errors import ProviderDown
from services.paysim.faults import FaultState
from services.paysim.ledger import PaymentLedger

log = logging.getLogger("paysim")


def create_app(settings: PaySimSettings | None = None) -> FastAPI:
    """Build one paysim provider; payments live in this process's memory (no Redis, no database)."""
    settings = settings or PaySimSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ledger = PaymentLedger(provider=settings.name, max_payments=settings.max_payments)
        app.state.faults = FaultState(provider=settings.name)
        app.state.audit = deque[dict[str, Any]](maxlen=settings.audit_size)
        app.state.token_verifier = TokenVerifier(settings)
        log.info("paysim provider %s started", settings.name)
        yield

    async def provider_up() -> None:
        # A "down" provider keeps answering health probes but leaves the pool, as a gateway would see it.
        if app.state.faults.down:
            raise ProviderDown("down by fault injection")

    app = service_app(
        settings,
        title=f"paysim ({settings.name})",
        description="A mock payment provider with fault injection for failover drills.",
        lifespan=lifespan,
        ready_checks={"provider": provider_up},
        public_prefix="",  # a provider of its own, called directly (not through the gateway)
    )
    app.include_router(router.router)
    app.include_router(admin.router)
    return app


app = create_app()

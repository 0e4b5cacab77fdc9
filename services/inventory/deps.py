"""The inventory service's dependency aliases: each route asks for the flow it uses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from services.inventory.allocations import Allocations
from services.inventory.holds import Holds
from services.inventory.ledger import StockLedger
from services.inventory.reconciliation import Reconciler
from services.inventory.reminders import Replenishment
from services.inventory.skus import Skus


def _from_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    # An async dependency: FastAPI would run a plain function in its thread pool on every request.
    async def flow(request: Request) -> Any:
        return getattr(request.app.state, name)

    return flow


LedgerDep = Annotated[StockLedger, Depends(_from_state("ledger"))]
SkusDep = Annotated[Skus, Depends(_from_state("skus"))]
AllocationsDep = Annotated[Allocations, Depends(_from_state("allocations"))]
HoldsDep = Annotated[Holds, Depends(_from_state("holds"))]
ReconcilerDep = Annotated[Reconciler, Depends(_from_state("reconciler"))]
ReplenishmentDep = Annotated[Replenishment, Depends(_from_state("replenishment"))]

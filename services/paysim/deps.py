"""Paysim's dependency aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.paysim.faults import FaultState
from services.paysim.ledger import PaymentLedger


async def _ledger(request: Request) -> PaymentLedger:
    ledger: PaymentLedger = request.app.state.ledger
    return ledger


async def _faults(request: Request) -> FaultState:
    faults: FaultState = request.app.state.faults
    return faults


async def _gated_faults(request: Request) -> FaultState:
    # Declared before the other parameters so a "down" provider refuses before looking at the request.
    faults: FaultState = request.app.state.faults
    await faults.gate()
    return faults


LedgerDep = Annotated[PaymentLedger, Depends(_ledger)]
FaultsDep = Annotated[FaultState, Depends(_faults)]
# The faults of a /payments call, already applied (down -> 503, error roll -> 500); add `.delay()` before answering.
GatedFaults = Annotated[FaultState, Depends(_gated_faults)]

"""The provider's public API: charge, look up, refund. Faults from /admin/faults apply to all of it."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from services.common.idempotency import IdempotencyKey
from services.common.openapi import problems
from services.paysim.deps import GatedFaults, LedgerDep
from services.paysim.errors import PaymentDeclined, PaymentNotFound, ProviderDown, ProviderError
from services.paysim.faults import PAYMENTS
from services.paysim.schemas import OrderId, PaymentOut, PaymentRequest

router = APIRouter(prefix="/payments", tags=["payments"])

PaymentId = Annotated[str, Path(min_length=1, max_length=64, description="Payment id from the charge")]

# Every payment call can meet an injected fault: 500 PROVIDER_ERROR (nothing was done) or 503 PROVIDER_DOWN.
FAULTS = (ProviderError, ProviderDown)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


@router.post("", status_code=201, response_model=PaymentOut, responses=problems(PaymentDeclined, *FAULTS))
async def create_payment(faults: GatedFaults, key: IdempotencyKey, body: PaymentRequest, ledger: LedgerDep) -> Response:
    """Charge an order once per Idempotency-Key; the same key again answers the same payment."""
    await faults.process()
    try:
        payment, replayed = ledger.charge(key=key, request=body)
    except PaymentDeclined:
        PAYMENTS.labels(ledger.provider, "declined").inc()
        await faults.delay()
        raise
    PAYMENTS.labels(ledger.provider, "replayed" if replayed else "succeeded").inc()
    # Latency comes after the charge: a caller that times out may well have been charged, as in real life.
    await faults.delay()
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return _json(payment.as_json(as_charged=True), 201, headers)


@router.get("", response_model=list[PaymentOut], responses=problems(*FAULTS))
async def list_payments(faults: GatedFaults, ledger: LedgerDep, order_id: Annotated[OrderId, Query()]) -> Response:
    """Every payment this provider holds for an order (what was really charged)."""
    payments = [p.as_json() for p in ledger.for_order(order_id)]
    await faults.delay()
    return _json(payments)


@router.get("/{payment_id}", response_model=PaymentOut, responses=problems(PaymentNotFound, *FAULTS))
async def get_payment(faults: GatedFaults, ledger: LedgerDep, payment_id: PaymentId) -> Response:
    """One payment."""
    payment = ledger.get(payment_id)
    await faults.delay()
    return _json(payment.as_json())


@router.post("/{payment_id}/refund", response_model=PaymentOut, responses=problems(PaymentNotFound, *FAULTS))
async def refund_payment(
    faults: GatedFaults, key: IdempotencyKey, ledger: LedgerDep, payment_id: PaymentId
) -> Response:
    """Refund a payment in full; refunding it again answers the refunded payment."""
    payment, changed = ledger.refund(key=key, payment_id=payment_id)
    if changed:
        PAYMENTS.labels(ledger.provider, "refunded").inc()
    await faults.delay()
    return _json(payment.as_json())

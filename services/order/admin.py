"""/admin endpoints for orders: search, one order with its payments, force cancel, fulfil, refund, stats."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from services.common.auth import AdminUser
from services.common.openapi import problems
from services.order import errors
from services.order.deps import ServiceDep
from services.order.models import OrderState
from services.order.router import OrderId
from services.order.schemas import AdminOrderOut, OrderOut, OrderStats, SaleReservations

router = APIRouter(prefix="/admin", tags=["admin"])
TRANSITION_PROBLEMS = (errors.OrderNotFound, errors.InvalidOrderState, errors.PaymentInProgress)


@router.get("/orders", response_model=list[OrderOut])
async def search_orders(
    user: AdminUser,
    service: ServiceDep,
    sale_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    user_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    state: OrderState | None = None,
    close_reason: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[OrderOut]:
    """Orders by sale, user, state and close reason (refund_pending ones need a human)."""
    await service.operations.audit_read(actor=user.user_id, action="search")
    return await service.operations.admin_search(
        sale_id=sale_id, user_id=user_id, state=state, limit=limit, offset=offset, close_reason=close_reason
    )


@router.get("/orders/stats", response_model=OrderStats)
async def order_stats(
    user: AdminUser, service: ServiceDep, sale_id: Annotated[int | None, Query(ge=1, le=2**62)] = None
) -> OrderStats:
    """Orders, paid, GMV, payment success rate, median time to pay."""
    await service.operations.audit_read(actor=user.user_id, action="stats")
    return await service.operations.stats(sale_id=sale_id)


@router.get("/sales/{sale_id}/reservations", response_model=SaleReservations)
async def sale_reservations(
    sale_id: Annotated[int, Path(ge=1, le=2**62)], user: AdminUser, service: ServiceDep
) -> SaleReservations:
    """Every reservation of a sale that has an order, with its units' stock state; flashsale's
    reconciliation compares it with its Redis counters and rebuilds them from it."""
    await service.operations.audit_read(actor=user.user_id, action="sale_reservations")
    return await service.operations.sale_reservations(sale_id=sale_id)


@router.get("/orders/{order_id}", response_model=AdminOrderOut, responses=problems(errors.OrderNotFound))
async def admin_order(order_id: OrderId, user: AdminUser, service: ServiceDep) -> AdminOrderOut:
    """One order with every payment attempt."""
    await service.operations.audit_read(actor=user.user_id, action="get")
    return await service.operations.admin_get(order_id)


CancelReason = Literal["cancelled_by_ops", "system_failure"]


@router.post("/orders/{order_id}/cancel", response_model=OrderOut, responses=problems(*TRANSITION_PROBLEMS))
async def force_cancel(
    order_id: OrderId, user: AdminUser, service: ServiceDep, reason: CancelReason = "cancelled_by_ops"
) -> OrderOut:
    """Cancel an unpaid order on the buyer's behalf; `system_failure` marks orders our outage broke
    (the coupon service can compensate all of them in one call)."""
    return await service.operations.admin_transition(
        actor=user.user_id, order_id=order_id, action="cancel", reason=reason
    )


@router.post("/orders/{order_id}/fulfil", response_model=OrderOut, responses=problems(*TRANSITION_PROBLEMS))
async def fulfil(order_id: OrderId, user: AdminUser, service: ServiceDep) -> OrderOut:
    """Mark a paid order shipped."""
    return await service.operations.admin_transition(actor=user.user_id, order_id=order_id, action="fulfil")


@router.post(
    "/orders/{order_id}/refund",
    response_model=OrderOut,
    responses=problems(*TRANSITION_PROBLEMS, errors.PaymentUnavailable),
)
async def refund(order_id: OrderId, user: AdminUser, service: ServiceDep) -> OrderOut:
    """Refund a paid order, or one paid after it closed (refund_pending)."""
    return await service.operations.admin_transition(actor=user.user_id, order_id=order_id, action="refund")

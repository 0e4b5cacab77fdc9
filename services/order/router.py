"""Storefront endpoints: my orders, an order by reservation (long-poll), pay, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import JSONResponse, Response

from services.common.auth import CurrentUser
from services.common.idempotency import IdempotencyKey, fingerprint
from services.common.openapi import problems
from services.order import errors
from services.order.deps import ServiceDep
from services.order.idempotency import KeyUse, OrderIdempotency
from services.order.schemas import OrderOut

router = APIRouter(tags=["orders"])

OrderId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")]
ReservationId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


@router.get("/orders", response_model=list[OrderOut])
async def my_orders(
    user: CurrentUser,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> list[OrderOut]:
    """The caller's orders, newest first."""
    return await service.views.list_orders(user_id=user.user_id, limit=limit, offset=offset)


@router.get(
    "/orders/by-reservation/{reservation_id}", response_model=OrderOut, responses=problems(errors.OrderNotFound)
)
async def order_by_reservation(
    reservation_id: ReservationId,
    user: CurrentUser,
    service: ServiceDep,
    wait: Annotated[float, Query(ge=0, le=20, description="Seconds to wait for the order to appear")] = 0,
) -> OrderOut:
    """The order created from a purchase; `wait` long-polls right after buying."""
    return await service.views.get_by_reservation(reservation_id=reservation_id, user_id=user.user_id, wait=wait)


@router.get("/orders/{order_id}", response_model=OrderOut, responses=problems(errors.OrderNotFound))
async def get_order(order_id: OrderId, user: CurrentUser, service: ServiceDep) -> OrderOut:
    """One of the caller's orders (another user's is 404)."""
    return await service.views.get_order(order_id=order_id, user_id=user.user_id)


async def _once(request: Request, owner: str, key: str, scope: str, action: Any) -> Response:
    store: OrderIdempotency = request.app.state.idempotency

    async def run() -> tuple[int, Any]:
        order: OrderOut = await action()
        return 200, order.model_dump(mode="json")

    status, body = await store.run(
        scope=scope, key=key, owner=owner, request_fingerprint=fingerprint({"path": request.url.path}), action=run
    )
    return JSONResponse(body, status_code=status)


@router.post(
    "/orders/{order_id}/pay",
    response_model=OrderOut,
    responses=problems(
        errors.OrderNotFound,
        errors.InvalidOrderState,
        errors.OrderExpired,
        errors.PricingPending,
        errors.PaymentDeclined,
        errors.PaymentUnavailable,
        errors.PaymentInProgress,
        errors.OrderClosed,
    ),
)
async def pay(
    request: Request, order_id: OrderId, user: CurrentUser, key: IdempotencyKey, service: ServiceDep
) -> Response:
    """Pay an order (primary provider, backup on failure); the same key never charges twice."""
    use = KeyUse("order-pay", user.user_id, key, fingerprint({"path": request.url.path}))
    status, body = await service.checkout.pay(order_id=order_id, user_id=user.user_id, key=use)
    return JSONResponse(body, status_code=status)


@router.post(
    "/orders/{order_id}/cancel",
    response_model=OrderOut,
    responses=problems(errors.OrderNotFound, errors.InvalidOrderState, errors.PaymentInProgress),
)
async def cancel(
    request: Request, order_id: OrderId, user: CurrentUser, key: IdempotencyKey, service: ServiceDep
) -> Response:
    """Cancel an unpaid order; its units go back to the sale."""
    return await _once(
        request,
        user.user_id,
        key,
        "order-cancel",
        lambda: service.cancellations.cancel(order_id=order_id, user_id=user.user_id),
    )

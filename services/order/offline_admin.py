"""/admin endpoints of the offline payment channel (services/order/offline.py): open, read and close a sale's
channel, and confirm an order's offline payment. Admin role; every change audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from services.common.auth import AdminUser
from services.common.openapi import problems
from services.order import errors
from services.order.deps import ServiceDep
from services.order.router import OrderId
from services.order.schemas import OfflineChannelOut, OfflineChannelRequest, OfflinePaymentRequest, OrderOut

router = APIRouter(prefix="/admin", tags=["admin"])
SaleId = Annotated[int, Path(ge=1, le=2**62)]


@router.post(
    "/sales/{sale_id}/offline-channel",
    response_model=OfflineChannelOut,
    responses=problems(errors.OfflineChannelOpen, errors.PaymentProvidersAvailable),
)
async def open_offline_channel(
    sale_id: SaleId, body: OfflineChannelRequest, user: AdminUser, service: ServiceDep
) -> OfflineChannelOut:
    """Open the sale's offline payment channel while every provider is down: its unpaid orders (and those
    created while it is open) stay payable `extend_minutes` longer and show the instructions."""
    return await service.offline.open_channel(
        actor=user.user_id, sale_id=sale_id, instructions=body.instructions, extend_minutes=body.extend_minutes
    )


@router.get(
    "/sales/{sale_id}/offline-channel", response_model=OfflineChannelOut, responses=problems(errors.NoOfflineChannel)
)
async def offline_channel(sale_id: SaleId, user: AdminUser, service: ServiceDep) -> OfflineChannelOut:
    """The sale's open offline channel, else its last one."""
    await service.operations.audit_read(actor=user.user_id, action="offline_channel")
    return await service.offline.channel_of(sale_id)


@router.post(
    "/sales/{sale_id}/offline-channel/close",
    response_model=OfflineChannelOut,
    responses=problems(errors.NoOfflineChannel),
)
async def close_offline_channel(sale_id: SaleId, user: AdminUser, service: ServiceDep) -> OfflineChannelOut:
    """Close the sale's offline channel (it also closes on its own once a provider answers again)."""
    return await service.offline.close_channel(actor=user.user_id, sale_id=sale_id)


@router.post(
    "/orders/{order_id}/offline-payment",
    response_model=OrderOut,
    responses=problems(
        errors.OrderNotFound,
        errors.InvalidOrderState,
        errors.PaymentInProgress,
        errors.OrderExpired,
        errors.NoOfflineChannel,
        errors.OfflinePaymentConflict,
    ),
)
async def confirm_offline_payment(
    order_id: OrderId, body: OfflinePaymentRequest, user: AdminUser, service: ServiceDep
) -> OrderOut:
    """Record an offline payment ops received for an unpaid order of a sale with a channel; the same
    reference again answers the paid order, another reference is refused."""
    return await service.offline.confirm_payment(actor=user.user_id, order_id=order_id, reference=body.reference)

"""/admin endpoints: templates, compensation coupons, stats, and the order service's lock call."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import APIRouter, Header

from services.common.auth import AdminUser
from services.common.idempotency import MAX_KEY_LENGTH, IdempotencyKeyInFlight, fingerprint
from services.common.openapi import KEY_PATTERN, problems
from services.coupon import errors
from services.coupon.deps import ServiceDep
from services.coupon.orders import buyers_of_sale
from services.coupon.router import TemplateId
from services.coupon.schemas import (
    ClaimedCoupon,
    CompensationRequest,
    LockRequest,
    QuoteOut,
    RefundOut,
    RefundRequest,
    TemplateCreate,
    TemplateOut,
    TemplateStats,
)

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/templates", status_code=201, response_model=TemplateOut, responses=problems(errors.InvalidTemplate))
async def create_template(body: TemplateCreate, user: AdminUser, service: ServiceDep) -> TemplateOut:
    """Create a template; bad tiers, percentages or amounts are refused with 422."""
    return await service.create_template(actor=user.user_id, data=body)


@router.get("/templates", response_model=list[TemplateOut])
async def list_templates(user: AdminUser, service: ServiceDep) -> list[TemplateOut]:
    """Every template, newest first."""
    return await service.list_templates(only_claimable=False)


@router.post("/templates/{template_id}/pause", response_model=TemplateOut, responses=problems(errors.TemplateNotFound))
async def pause(template_id: TemplateId, user: AdminUser, service: ServiceDep) -> TemplateOut:
    """Stop claims."""
    return await service.set_template_state(actor=user.user_id, template_id=template_id, state="paused")


@router.post("/templates/{template_id}/resume", response_model=TemplateOut, responses=problems(errors.TemplateNotFound))
async def resume(template_id: TemplateId, user: AdminUser, service: ServiceDep) -> TemplateOut:
    """Open claims again."""
    return await service.set_template_state(actor=user.user_id, template_id=template_id, state="active")


@router.get("/templates/{template_id}/stats", response_model=TemplateStats, responses=problems(errors.TemplateNotFound))
async def stats(template_id: TemplateId, user: AdminUser, service: ServiceDep) -> TemplateStats:
    """Claimed, locked, used, and the discount given."""
    return await service.stats(template_id)


@router.post(
    "/compensation",
    response_model=list[ClaimedCoupon],
    responses=problems(
        errors.TemplateNotFound,
        errors.CouponsExhausted,
        errors.ClaimWindowClosed,
        errors.ClaimUnavailable,
        errors.OrdersUnavailable,
        errors.OrdersRefused,
        IdempotencyKeyInFlight,
    ),
)
async def compensate(
    body: CompensationRequest,
    user: AdminUser,
    service: ServiceDep,
    key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=MAX_KEY_LENGTH, pattern=KEY_PATTERN)
    ] = None,
) -> list[ClaimedCoupon]:
    """Issue one coupon to each listed user, or to the buyers of `sale_id` that `buyers` names (asked of the
    order service); the same batch (Idempotency-Key) issues nothing twice, and repeated later reaches only
    the buyers it had not reached."""
    batch = key or fingerprint(body.model_dump())
    user_ids = body.user_ids
    if user_ids is None:
        assert body.sale_id is not None
        try:
            user_ids = await buyers_of_sale(service.settings, body.sale_id, body.buyers)
        except httpx.HTTPStatusError as exc:
            # It answered: a refusal (4xx) is passed on as one; only a failure to serve is an outage.
            if exc.response.status_code >= 500:
                raise errors.OrdersUnavailable("The order service could not answer; nothing was issued") from None
            raise errors.OrdersRefused.of(exc.response) from None
        except httpx.HTTPError:
            raise errors.OrdersUnavailable("The order service did not answer; nothing was issued") from None
    return await service.issue_compensation(
        actor=user.user_id, template_id=body.template_id, user_ids=user_ids, reason=body.reason, batch=batch
    )


@router.post("/locks", response_model=QuoteOut)
async def lock_for_order(body: LockRequest, user: AdminUser, service: ServiceDep) -> QuoteOut:
    """Price an order and lock its coupons (the order service calls this with a service token)."""
    return await service.lock_for_order(
        order_id=body.order_id,
        user_id=body.user_id,
        is_member=body.is_member,
        lines=body.lines,
        coupon_ids=body.coupon_ids,
    )


@router.post("/refund-amount", response_model=RefundOut, responses=problems(errors.InvalidRefund))
async def refund_amount(body: RefundRequest, user: AdminUser, service: ServiceDep) -> RefundOut:
    """How much to refund when some lines of a paid order that used coupons are returned.

    Rule: **refund = what the customer paid - what the kept lines cost with the same coupons.** A coupon
    keeps its effect only while the kept lines still earn it. With the tiers spend 300 save 50 / spend 500
    save 100, an order of 600.00 paid 500.00; returning a 150.00 line leaves 450.00, which earns only 50.00
    off, so the kept lines cost 400.00 and the refund is 100.00 (not 150.00). Returning everything refunds
    exactly what was paid; a refund is never negative and never more than what was paid.
    """
    return await service.refund_amount(
        order_id=body.order_id, user_id=body.user_id, lines=body.lines, refunded=body.refunded
    )

"""Storefront endpoints: claimable templates, claim, wallet, quote."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from services.common.auth import CurrentUser
from services.common.idempotency import IdempotencyKey
from services.common.openapi import problems
from services.coupon import errors
from services.coupon.deps import ServiceDep
from services.coupon.models import CouponState
from services.coupon.schemas import ClaimedCoupon, QuoteOut, QuoteRequest, TemplateOut, WalletCoupon

router = APIRouter(tags=["coupons"])

TemplateId = Annotated[int, Path(ge=1, le=2**62)]
MEMBER_ROLE = "member"


@router.get("/templates", response_model=list[TemplateOut])
async def claimable(service: ServiceDep) -> list[TemplateOut]:
    """Templates open for claims."""
    return await service.list_templates(only_claimable=True)


@router.post(
    "/templates/{template_id}/claim",
    status_code=201,
    response_model=ClaimedCoupon,
    responses=problems(
        errors.TemplateNotFound,
        errors.CouponsExhausted,
        errors.ClaimLimitReached,
        errors.ClaimWindowClosed,
        errors.ClaimUnavailable,
    ),
)
async def claim(template_id: TemplateId, user: CurrentUser, key: IdempotencyKey, service: ServiceDep) -> ClaimedCoupon:
    """Claim one coupon (total and per-user limits decided atomically); a replayed key returns the same coupon."""
    return await service.claim(template_id=template_id, user_id=user.user_id, key=key)


@router.get("/wallet", response_model=list[WalletCoupon])
async def wallet(user: CurrentUser, service: ServiceDep, state: CouponState | None = None) -> list[WalletCoupon]:
    """My coupons by state (available, locked, used, expired), with what each needs to apply."""
    return await service.wallet(user_id=user.user_id, state=state)


@router.post("/quote", response_model=QuoteOut)
async def price(body: QuoteRequest, user: CurrentUser, service: ServiceDep) -> QuoteOut:
    """Subtotal, each discount with its reason, the total; coupons that do not apply say why (`code`)."""
    return await service.quote(
        user_id=user.user_id, is_member=MEMBER_ROLE in user.roles, lines=body.lines, coupon_ids=body.coupon_ids
    )

"""Storefront endpoints: live availability and holds for regular checkout."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from services.common.auth import CurrentUser
from services.common.idempotency import IdempotencyKey
from services.common.openapi import problems
from services.inventory import errors
from services.inventory.deps import HoldsDep, SkusDep
from services.inventory.schemas import SKU_PATTERN, Availability, HoldOut, HoldRequest

router = APIRouter(tags=["inventory"])

SkuPath = Annotated[str, Path(pattern=SKU_PATTERN)]
HoldId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
HOLD_PROBLEMS = (errors.HoldNotFound, errors.HoldNotActive)


@router.get("/skus/{sku}/availability", response_model=Availability, responses=problems(errors.SkuNotFound))
async def availability(sku: SkuPath, skus: SkusDep) -> Availability:
    """Available units, read from the Redis mirror of the committed counters."""
    return await skus.availability(sku)


@router.post(
    "/holds",
    status_code=201,
    response_model=HoldOut,
    responses=problems(errors.SkuNotFound, errors.InsufficientStock, errors.InvalidHold),
)
async def create_hold(body: HoldRequest, user: CurrentUser, key: IdempotencyKey, holds: HoldsDep) -> HoldOut:
    """Set units aside until `ttl_seconds` pass (409 INSUFFICIENT_STOCK when too few are available)."""
    return await holds.create_hold(
        user_id=user.user_id, key=key, sku=body.sku, quantity=body.quantity, ttl_seconds=body.ttl_seconds
    )


@router.post("/holds/{hold_id}/confirm", response_model=HoldOut, responses=problems(*HOLD_PROBLEMS, errors.HoldExpired))
async def confirm_hold(hold_id: HoldId, user: CurrentUser, holds: HoldsDep) -> HoldOut:
    """The checkout was paid: the held units are sold (409 HOLD_EXPIRED past the deadline)."""
    return await holds.confirm_hold(hold_id=hold_id, user_id=user.user_id, is_admin=user.is_admin)


@router.post("/holds/{hold_id}/release", response_model=HoldOut, responses=problems(*HOLD_PROBLEMS))
async def release_hold(hold_id: HoldId, user: CurrentUser, holds: HoldsDep) -> HoldOut:
    """The checkout was abandoned: the held units go back to available."""
    return await holds.release_hold(hold_id=hold_id, user_id=user.user_id, is_admin=user.is_admin)

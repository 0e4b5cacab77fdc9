"""The coupon service's dependency aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.coupon.service import CouponService


async def _service(request: Request) -> CouponService:
    service: CouponService = request.app.state.service
    return service


ServiceDep = Annotated[CouponService, Depends(_service)]

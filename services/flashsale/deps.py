"""Flashsale's dependency aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.flashsale.service import FlashSaleService


async def _service(request: Request) -> FlashSaleService:
    service: FlashSaleService = request.app.state.service
    return service


ServiceDep = Annotated[FlashSaleService, Depends(_service)]

"""The order service's dependency aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.order.service import OrderService


async def _service(request: Request) -> OrderService:
    service: OrderService = request.app.state.service
    return service


ServiceDep = Annotated[OrderService, Depends(_service)]

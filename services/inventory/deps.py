"""The inventory service's dependency aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.inventory.service import InventoryService


async def _service(request: Request) -> InventoryService:
    service: InventoryService = request.app.state.service
    return service


ServiceDep = Annotated[InventoryService, Depends(_service)]

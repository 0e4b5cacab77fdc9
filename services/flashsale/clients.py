"""The services flashsale asks: inventory (the warehouse its stock is allocated from) and order (the record
reconciliation compares Redis with). Both over their admin APIs, with a service token."""

from __future__ import annotations

from typing import Any

import httpx

from services.common.auth import ServiceToken
from services.flashsale import errors
from services.flashsale.config import FlashSaleSettings


class _AdminClient:
    def __init__(self, settings: FlashSaleSettings, base_url: str, name: str) -> None:
        self.name = name
        self.token = ServiceToken(settings, "flashsale-service", settings.service_token)
        self.client = httpx.AsyncClient(base_url=base_url, timeout=settings.upstream_timeout_seconds)

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            resp = await self.client.request(method, path, headers=self.token.headers(), **kwargs)
        except httpx.HTTPError as exc:
            raise errors.DependencyUnavailable(
                f"The {self.name} service did not answer ({type(exc).__name__}); nothing was changed",
                code=f"{self.name.upper()}_UNAVAILABLE",
            ) from None
        if resp.status_code >= 500 or resp.status_code in (401, 403):
            raise errors.DependencyUnavailable(
                f"The {self.name} service answered {resp.status_code}; nothing was changed",
                code=f"{self.name.upper()}_UNAVAILABLE",
            )
        body: dict[str, Any] = resp.json()
        if resp.status_code >= 400:
            # The warehouse refused (too few units, unknown SKU): the admin gets its reason and code.
            raise errors.DependencyRefused(
                str(body.get("detail") or body.get("title") or "refused"),
                code=str(body.get("code") or "REFUSED"),
                extra={k: v for k, v in body.items() if k in ("available", "sold", "returned", "outstanding")},
            )
        return body

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


class InventoryClient(_AdminClient):
    """`PUT /admin/allocations/{sale}/{sku}`: running totals, so a retried or repeated call is harmless."""

    def __init__(self, settings: FlashSaleSettings) -> None:
        super().__init__(settings, settings.inventory_url, "inventory")

    async def set_allocation(
        self, *, sale_id: int, sku: str, allocated: int, sold: int | None = None, returned: int | None = None
    ) -> dict[str, Any]:
        """Bring the sale's allocation to these totals; raises DependencyRefused (e.g. INSUFFICIENT_STOCK)."""
        body: dict[str, Any] = {"allocated": allocated}
        if sold is not None:
            body["sold"] = sold
        if returned is not None:
            body["returned"] = returned
        return await self._call("PUT", f"/admin/allocations/{sale_id}/{sku}", json=body)

    async def open_allocations(self) -> list[dict[str, Any]]:
        """Every allocation the warehouse still counts as holding units, of any sale."""
        body: Any = await self._call("GET", "/admin/allocations")
        return list(body)

    async def allocation(self, *, sale_id: int, sku: str) -> dict[str, Any] | None:
        """The sale's allocation as the warehouse records it, or None when it has none."""
        try:
            return await self._call("GET", f"/admin/allocations/{sale_id}/{sku}")
        except errors.DependencyRefused as exc:
            if exc.code == "ALLOCATION_NOT_FOUND":
                return None
            raise


class OrderRecordClient(_AdminClient):
    """`GET /admin/sales/{sale}/reservations` on the order service."""

    def __init__(self, settings: FlashSaleSettings) -> None:
        super().__init__(settings, settings.order_url, "order")

    async def sale_reservations(self, sale_id: int) -> dict[str, Any]:
        """Every reservation of the sale that has an order, with reserved/sold/released per reservation."""
        return await self._call("GET", f"/admin/sales/{sale_id}/reservations")

    async def sale_order_stats(self, sale_id: int) -> dict[str, Any]:
        """Orders, paid, GMV and payment success of the sale (`GET /admin/orders/stats?sale_id=`)."""
        return await self._call("GET", "/admin/orders/stats", params={"sale_id": sale_id})

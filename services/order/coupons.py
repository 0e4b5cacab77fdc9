"""The coupon service, as the order service calls it: price an order and lock the coupons it uses."""

from __future__ import annotations

from typing import Any

import httpx

from services.common.auth import ServiceToken
from services.order.config import OrderSettings


class CouponClient:
    """`POST /admin/locks` on the coupon service (idempotent per order id)."""

    def __init__(self, settings: OrderSettings) -> None:
        self.token = ServiceToken(settings, "order-service", settings.service_token)
        self.client = httpx.AsyncClient(base_url=settings.coupon_url, timeout=settings.coupon_timeout_seconds)

    async def lock(
        self, *, order_id: str, user_id: str, member: bool, lines: list[dict[str, Any]], coupon_ids: list[str]
    ) -> dict[str, Any]:
        """The quote the order is priced at; raises httpx.HTTPError when the coupon service cannot answer."""
        resp = await self.client.post(
            "/admin/locks",
            headers=self.token.headers(),
            json={
                "order_id": order_id,
                "user_id": user_id,
                "is_member": member,
                "lines": lines,
                "coupon_ids": coupon_ids,
            },
        )
        resp.raise_for_status()
        quote: dict[str, Any] = resp.json()
        return quote

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

"""The order service, as the coupon service asks it: whose orders did a system failure cancel?"""

from __future__ import annotations

import httpx

from services.common.auth import ServiceToken
from services.coupon.config import CouponSettings

PAGE = 500


async def buyers_hit_by_system_failure(settings: CouponSettings, sale_id: int) -> list[str]:
    """Users with an order in the sale cancelled with reason `system_failure` (each once, in order)."""
    headers = ServiceToken(settings, "coupon-service", settings.service_token).headers()
    users: dict[str, None] = {}
    async with httpx.AsyncClient(base_url=settings.order_url, timeout=10, headers=headers) as client:
        offset = 0
        while True:
            resp = await client.get(
                "/admin/orders",
                params={
                    "sale_id": sale_id,
                    "state": "cancelled",
                    "close_reason": "system_failure",
                    "limit": PAGE,
                    "offset": offset,
                },
            )
            resp.raise_for_status()
            page = resp.json()
            for order in page:
                users[str(order["user_id"])] = None
            if len(page) < PAGE:
                return list(users)
            offset += PAGE

"""The order service, as the coupon service asks it: who bought in a sale (whose orders a system failure
cancelled, who paid), and what became of the orders that hold coupons."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from services.common.auth import ServiceToken
from services.coupon.config import CouponSettings

PAGE = 500
LOOKUPS_AT_ONCE = 8  # order lookups in flight per replica: recovery must not crowd out the order API


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """What the order record says of one order."""

    order_id: str
    user_id: str
    state: str


def _client(settings: CouponSettings) -> httpx.AsyncClient:
    headers = ServiceToken(settings, "coupon-service", settings.service_token).headers()
    return httpx.AsyncClient(base_url=settings.order_url, timeout=settings.order_timeout_seconds, headers=headers)


# The order filters that pick each kind of a sale's buyers: a paid order may since have been fulfilled.
BUYER_FILTERS: dict[str, tuple[dict[str, str], ...]] = {
    "system_failure": ({"state": "cancelled", "close_reason": "system_failure"},),
    "paid": ({"state": "paid"}, {"state": "fulfilled"}),
}


async def buyers_of_sale(settings: CouponSettings, sale_id: int, buyers: str) -> list[str]:
    """Users with an order in the sale that matches `buyers` (BUYER_FILTERS), each once, in order.

    Raises httpx.HTTPStatusError when the order service refuses the question, httpx.HTTPError when it
    does not answer.
    """
    users: dict[str, None] = {}
    async with _client(settings) as client:
        for query in BUYER_FILTERS[buyers]:
            offset = 0
            while True:
                params: dict[str, str | int] = {"sale_id": sale_id, **query, "limit": PAGE, "offset": offset}
                resp = await client.get("/admin/orders", params=params)
                resp.raise_for_status()
                page = resp.json()
                for order in page:
                    users[str(order["user_id"])] = None
                if len(page) < PAGE:
                    break
                offset += PAGE
    return list(users)


async def order_records(settings: CouponSettings, order_ids: Sequence[str]) -> dict[str, OrderRecord]:
    """The order record of each order id the order service knows (an unknown one is left out).

    Raises httpx.HTTPError when the order service does not answer one of them.
    """
    gate = asyncio.Semaphore(LOOKUPS_AT_ONCE)
    async with _client(settings) as client:

        async def one(order_id: str) -> OrderRecord | None:
            async with gate:
                resp = await client.get(f"/admin/orders/{order_id}")
            if resp.status_code in (404, 422):  # no such order (422: not even an order id)
                return None
            resp.raise_for_status()
            body = resp.json()
            return OrderRecord(order_id=order_id, user_id=str(body["user_id"]), state=str(body["state"]))

        found = await asyncio.gather(*(one(o) for o in dict.fromkeys(order_ids)))
    return {r.order_id: r for r in found if r is not None}

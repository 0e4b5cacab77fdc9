"""Alerts say what they promise: one sale.sold_out per sell-out, and each sale's alerts readable by ops."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from services.common.contracts import ALERTS_STREAM, ORDER_EVENTS_STREAM, EventType, encode_event, sale_alert_stream
from tests.conftest import WebhookReceiver, admin_headers, customer_headers, live_sale, sale_stats, wait_for


async def _buy(client: httpx.AsyncClient, sale_id: int, user: str, qty: int = 1) -> httpx.Response:
    return await client.post(f"/sales/{sale_id}/purchase", json={"quantity": qty}, headers=customer_headers(user, "k"))


async def _sell_out(client: httpx.AsyncClient, sale_id: int, units: int) -> list[str]:
    reservations = []
    for n in range(units):
        resp = await _buy(client, sale_id, f"so-{sale_id}-{n}")
        assert resp.status_code == 202, resp.text
        reservations.append(resp.json()["reservation_id"])
    return reservations


async def _release(client: httpx.AsyncClient, redis: Redis, sale_id: int, reservation_ids: list[str]) -> None:
    before = (await sale_stats(client, sale_id))["remaining"]
    for rid in reservation_ids:
        event = {"sale_id": sale_id, "reservation_id": rid, "order_id": f"o-{rid}"}
        await redis.xadd(ORDER_EVENTS_STREAM, encode_event(EventType.ORDER_CANCELLED, event))

    async def released() -> bool:
        return bool((await sale_stats(client, sale_id))["remaining"] == before + len(reservation_ids))

    await wait_for(released)


async def _sold_out_events(redis: Redis, sale_id: int) -> int:
    entries = await redis.xrange(sale_alert_stream(sale_id))
    return sum(1 for _i, fields in entries if fields["type"] == "sale.sold_out")


async def _relayed(redis: Redis, sale_id: int) -> list[dict[str, Any]]:
    alerts = [orjson.loads(f["data"]) for _i, f in await redis.xrange(ALERTS_STREAM)]
    return [a for a in alerts if a.get("sale_id") == sale_id and a.get("type") == "sale.sold_out"]


async def test_units_released_and_sold_again_below_the_threshold_do_not_repeat_the_sold_out_alert(
    client: httpx.AsyncClient, redis: Redis, webhook: WebhookReceiver
) -> None:
    # 10 units, low-stock threshold 20% = 2 units.
    sale = await live_sale(client, quantity=10, per_user_limit=1, low_stock_threshold_pct=20)
    reservations = await _sell_out(client, sale["id"], 10)
    for cycle in range(3):  # a cancelled order gives a unit back and the next buyer takes it: still sold out
        await _release(client, redis, sale["id"], reservations[cycle : cycle + 1])
        buyer = f"so-again-{sale['id']}-{cycle}"

        async def bought(buyer: str = buyer) -> bool:
            # Another replica may have released the unit: this one's sold-out flag clears when its "buyable"
            # notification arrives, or at the latest when the flag expires (FLASHSALE_SOLD_OUT_CACHE_SECONDS).
            resp = await _buy(client, sale["id"], buyer)
            assert resp.status_code in (202, 409), resp.text
            return resp.status_code == 202

        await wait_for(bought, timeout=5, interval=0.1)
    assert (await sale_stats(client, sale["id"]))["remaining"] == 0
    assert await _sold_out_events(redis, sale["id"]) == 1
    await wait_for(lambda: _relayed(redis, sale["id"]), timeout=30)
    assert len(await _relayed(redis, sale["id"])) == 1

    async def hooks() -> list[dict[str, Any]]:
        return [a for a in webhook.for_sale(sale["id"]) if a["type"] == "sale.sold_out"]

    assert len(await wait_for(hooks, timeout=30)) == 1


async def test_stock_back_above_the_threshold_makes_the_next_sell_out_alert_again(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=1, low_stock_threshold_pct=20)
    reservations = await _sell_out(client, sale["id"], 10)
    await _release(client, redis, sale["id"], reservations[:3])  # 3 left: above the threshold of 2
    for n in range(3):
        assert (await _buy(client, sale["id"], f"so-rearm-{sale['id']}-{n}")).status_code == 202
    assert await _sold_out_events(redis, sale["id"]) == 2


async def test_a_restock_makes_the_next_sell_out_alert_again(client: httpx.AsyncClient, redis: Redis) -> None:
    sale = await live_sale(client, quantity=2, per_user_limit=1, low_stock_threshold_pct=0)
    await _sell_out(client, sale["id"], 2)
    added = await client.post(f"/admin/sales/{sale['id']}/stock", json={"units": 1}, headers=admin_headers())
    assert added.status_code == 200
    assert (await _buy(client, sale["id"], f"so-restock-{sale['id']}")).status_code == 202
    assert await _sold_out_events(redis, sale["id"]) == 2


async def test_an_admin_reads_one_sales_alerts_oldest_first_and_pages_on(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=4, per_user_limit=1, low_stock_threshold_pct=50)
    other = await live_sale(client, quantity=1, per_user_limit=1)
    await _sell_out(client, sale["id"], 4)
    await _sell_out(client, other["id"], 1)
    url = f"/admin/sales/{sale['id']}/alerts"

    resp = await client.get(url, headers=admin_headers())
    assert resp.status_code == 200, resp.text
    alerts = resp.json()
    assert [a["type"] for a in alerts] == ["stock.low", "sale.sold_out"]
    assert all(a["data"]["sale_id"] == sale["id"] and a["id"].startswith(f"{sale['id']}-") for a in alerts)
    assert alerts[0]["data"]["remaining"] == 2 and alerts[0]["at"]
    page = (await client.get(url, params={"after": alerts[0]["id"], "limit": 5}, headers=admin_headers())).json()
    assert [a["id"] for a in page] == [alerts[1]["id"]]

    audit = (await client.get("/admin/audit", params={"sale_id": sale["id"]}, headers=admin_headers())).json()
    assert any(e["action"] == "alerts" and e["actor"] == "ops-alice" for e in audit)


async def test_a_sales_alerts_need_the_admin_role_an_existing_sale_and_a_valid_cursor(
    client: httpx.AsyncClient,
) -> None:
    sale = await live_sale(client, quantity=1)
    url = f"/admin/sales/{sale['id']}/alerts"
    assert (await client.get(url, headers=customer_headers("nosy"))).status_code == 403
    assert (await client.get(url)).status_code == 401
    missing = await client.get("/admin/sales/987654321/alerts", headers=admin_headers())
    assert (missing.status_code, missing.json()["code"]) == (404, "SALE_NOT_FOUND")
    for bad in ("abc", "1-2", f"{sale['id'] + 1}-1-0"):
        resp = await client.get(url, params={"after": bad}, headers=admin_headers())
        assert (resp.status_code, resp.json()["code"]) == (422, "VALIDATION_ERROR"), bad

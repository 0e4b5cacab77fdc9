"""Low-stock alerts (stream, real webhook, metric, auto-pause), sold-out events, and releases."""

from __future__ import annotations

import httpx
import orjson
from redis.asyncio import Redis

from services.common.contracts import ALERTS_STREAM, ORDER_EVENTS_STREAM, EventType, encode_event
from services.flashsale.store import bought_key, reservations_key
from tests.conftest import WebhookReceiver, admin_headers, customer_headers, live_sale, sale_stats, wait_for


async def _buy(client: httpx.AsyncClient, sale_id: int, user: str, key: str, qty: int = 1) -> httpx.Response:
    return await client.post(f"/sales/{sale_id}/purchase", json={"quantity": qty}, headers=customer_headers(user, key))


async def _alerts_on_stream(redis: Redis, sale_id: int) -> list[dict[str, object]]:
    entries = await redis.xrange(ALERTS_STREAM)
    return [d for d in (orjson.loads(f["data"]) for _i, f in entries) if d.get("sale_id") == sale_id]


async def _release(
    redis: Redis, sale_id: int, reservation_id: str, event_type: EventType = EventType.ORDER_CANCELLED
) -> None:
    await redis.xadd(
        ORDER_EVENTS_STREAM,
        encode_event(event_type, {"sale_id": sale_id, "reservation_id": reservation_id, "order_id": "o-1"}),
    )


async def test_one_alert_per_threshold_crossing(
    client: httpx.AsyncClient, redis: Redis, webhook: WebhookReceiver
) -> None:
    # 20 units, threshold 25% = 5 units: the alert fires when remaining reaches 5.
    sale = await live_sale(client, quantity=20, per_user_limit=20, low_stock_threshold_pct=25)
    sale_id = sale["id"]
    reservations = []
    for n in range(14):
        resp = await _buy(client, sale_id, f"a-{n}", "k")
        assert resp.status_code == 202
        reservations.append(resp.json()["reservation_id"])
    assert await _alerts_on_stream(redis, sale_id) == []

    assert (await _buy(client, sale_id, "a-14", "k")).status_code == 202  # remaining 5: crossing
    for n in range(15, 18):
        assert (await _buy(client, sale_id, f"a-{n}", "k")).status_code == 202  # still below: no new alert

    async def low_alerts_delivered(count: int) -> bool:
        hooks = [a for a in webhook.for_sale(sale_id) if a["type"] == "stock.low"]
        stream = [a for a in await _alerts_on_stream(redis, sale_id) if a["type"] == "stock.low"]
        return len(hooks) >= count and len(stream) >= count

    await wait_for(lambda: low_alerts_delivered(1))
    # Releasing units lifts the stock above the threshold and re-arms the alert.
    for rid in reservations[:4]:
        await _release(redis, sale_id, rid)
    await wait_for(lambda: _remaining_is(client, sale_id, 6))
    assert (await _buy(client, sale_id, "a-20", "k")).status_code == 202  # 5 left again: second crossing
    await wait_for(lambda: low_alerts_delivered(2))

    hooks = [a for a in webhook.for_sale(sale_id) if a["type"] == "stock.low"]
    stream = [a for a in await _alerts_on_stream(redis, sale_id) if a["type"] == "stock.low"]
    assert len(hooks) == 2
    assert len(stream) == 2
    assert [a["remaining"] for a in hooks] == [5, 5]
    assert hooks[0]["threshold"] == 5
    metrics = (await client.get("/metrics")).text
    assert 'flashsale_stock_alerts_total{type="stock.low"}' in metrics


async def _remaining_is(client: httpx.AsyncClient, sale_id: int, remaining: int) -> bool:
    return bool((await sale_stats(client, sale_id))["remaining"] == remaining)


async def test_alert_and_pause_pauses_the_sale(client: httpx.AsyncClient, webhook: WebhookReceiver) -> None:
    sale = await live_sale(
        client, quantity=10, per_user_limit=10, low_stock_threshold_pct=50, low_stock_policy="alert_and_pause"
    )
    sale_id = sale["id"]
    for n in range(5):
        assert (await _buy(client, sale_id, f"ap-{n}", "k")).status_code == 202
    refused = await _buy(client, sale_id, "ap-9", "k")
    assert refused.status_code == 423
    assert refused.json()["code"] == "SALE_NOT_LIVE"

    async def recorded_paused() -> bool:
        resp = await client.get(f"/admin/sales/{sale_id}", headers=admin_headers())
        return bool(resp.json()["state"] == "paused")

    await wait_for(recorded_paused)
    await wait_for(lambda: _has_hook(webhook, sale_id, "stock.low"))
    assert webhook.for_sale(sale_id)[0]["paused"] == 1
    audit = (await client.get("/admin/audit", params={"sale_id": sale_id}, headers=admin_headers())).json()
    assert any(e["action"] == "auto_pause" and e["actor"] == "system" for e in audit)
    # Ops resume by hand, and the sale carries on where it stopped.
    assert (await client.post(f"/admin/sales/{sale_id}/resume", headers=admin_headers())).status_code == 200
    assert (await _buy(client, sale_id, "ap-9", "k2")).status_code == 202
    assert (await sale_stats(client, sale_id))["remaining"] == 4


async def _has_hook(webhook: WebhookReceiver, sale_id: int, event_type: str) -> bool:
    return any(a["type"] == event_type for a in webhook.for_sale(sale_id))


async def test_selling_out_emits_one_sold_out_event(
    client: httpx.AsyncClient, redis: Redis, webhook: WebhookReceiver
) -> None:
    sale = await live_sale(client, quantity=3, per_user_limit=3)
    sale_id = sale["id"]
    assert (await _buy(client, sale_id, "so-1", "k", qty=3)).status_code == 202
    for n in range(5):
        assert (await _buy(client, sale_id, f"so-x{n}", "k")).json()["code"] == "SOLD_OUT"
    await wait_for(lambda: _has_hook(webhook, sale_id, "sale.sold_out"))
    sold_out = [a for a in await _alerts_on_stream(redis, sale_id) if a["type"] == "sale.sold_out"]
    assert len(sold_out) == 1
    stats = await sale_stats(client, sale_id)
    assert stats["sold_out_at"] is not None
    assert stats["attempts"]["sold_out"] >= 5


async def test_webhook_is_retried_until_the_receiver_accepts(
    client: httpx.AsyncClient, webhook: WebhookReceiver
) -> None:
    sale = await live_sale(client, quantity=2, per_user_limit=2)
    webhook.fail_next = 2
    assert (await _buy(client, sale["id"], "retry-1", "k", qty=2)).status_code == 202
    await wait_for(lambda: _has_hook(webhook, sale["id"], "sale.sold_out"), timeout=15)
    assert len([a for a in webhook.for_sale(sale["id"]) if a["type"] == "sale.sold_out"]) == 1


async def test_release_event_delivered_three_times_restores_stock_once(client: httpx.AsyncClient, redis: Redis) -> None:
    sale = await live_sale(client, quantity=2, per_user_limit=2)
    sale_id = sale["id"]
    first = await _buy(client, sale_id, "rel-1", "k1", qty=2)
    rid = first.json()["reservation_id"]
    assert (await _buy(client, sale_id, "rel-2", "k1")).json()["code"] == "SOLD_OUT"

    for _ in range(3):
        await _release(redis, sale_id, rid, EventType.ORDER_EXPIRED)
    await wait_for(lambda: _remaining_is(client, sale_id, 2))
    # Let every delivery land before judging: the pending list of the group empties.
    await wait_for(lambda: _group_drained(redis))
    stats = await sale_stats(client, sale_id)
    assert (stats["remaining"], stats["reserved"], stats["released"]) == (2, 0, 2)
    assert await redis.hget(bought_key(sale_id), "rel-1") is None
    assert (await redis.hget(reservations_key(sale_id), rid) or "").endswith("|released")

    # The sold-out sale is buyable again inside its window, and the user's count was restored.
    again = await wait_for(lambda: _buy_ok(client, sale_id, "rel-1", "k2", 2), timeout=5)
    assert again.status_code == 202
    assert (await sale_stats(client, sale_id))["remaining"] == 0


async def _buy_ok(client: httpx.AsyncClient, sale_id: int, user: str, key: str, qty: int) -> httpx.Response | None:
    resp = await _buy(client, sale_id, user, key, qty)
    return resp if resp.status_code == 202 else None


async def _group_drained(redis: Redis) -> bool:
    groups = await redis.xinfo_groups(ORDER_EVENTS_STREAM)
    flashsale = [g for g in groups if g["name"] == "flashsale"]
    return bool(flashsale) and all(int(g["pending"]) == 0 and int(g.get("lag") or 0) == 0 for g in flashsale)


async def test_paid_order_confirms_the_reservation_and_a_later_cancel_does_not_release_it(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    sale = await live_sale(client, quantity=5, per_user_limit=5)
    sale_id = sale["id"]
    rid = (await _buy(client, sale_id, "paid-1", "k", qty=2)).json()["reservation_id"]
    await _release(redis, sale_id, rid, EventType.ORDER_PAID)
    await _release(redis, sale_id, rid, EventType.ORDER_PAID)
    await _release(redis, sale_id, rid, EventType.ORDER_CANCELLED)
    await wait_for(lambda: _group_drained(redis))

    async def sold_two() -> bool:
        stats = await sale_stats(client, sale_id)
        return bool((stats["sold"], stats["reserved"], stats["remaining"]) == (2, 0, 3))

    await wait_for(sold_two)

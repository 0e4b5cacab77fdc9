"""The sale lifecycle: states that refuse purchases, the window moving states on its own, audit, auth."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from redis.asyncio import Redis

from services.flashsale.store import reservations_key, sale_key
from tests.conftest import admin_headers, create_sale, customer_headers, live_sale, sale_stats, wait_for


async def _buy(client: httpx.AsyncClient, sale_id: int, user: str, key: str, qty: int = 1) -> httpx.Response:
    return await client.post(f"/sales/{sale_id}/purchase", json={"quantity": qty}, headers=customer_headers(user, key))


async def _admin(client: httpx.AsyncClient, sale_id: int, action: str) -> httpx.Response:
    return await client.post(f"/admin/sales/{sale_id}/{action}", headers=admin_headers())


async def test_draft_sale_refuses_purchases(client: httpx.AsyncClient) -> None:
    sale = await create_sale(client)
    resp = await _buy(client, sale["id"], "d-1", "k")
    assert resp.status_code == 423
    assert resp.json()["code"] == "SALE_NOT_LIVE"
    assert (await client.get(f"/sales/{sale['id']}")).status_code == 404  # drafts are not public


async def test_scheduled_sale_refuses_before_start_and_goes_live_and_ends_on_its_own(
    client: httpx.AsyncClient, replicas: list[str]
) -> None:
    # Three schedulers run (this app and two replicas); each transition must still happen exactly once.
    now = datetime.now(UTC)
    sale = await create_sale(
        client, starts_at=(now + timedelta(seconds=2)).isoformat(), ends_at=(now + timedelta(seconds=5)).isoformat()
    )
    sale_id = sale["id"]
    assert (await _admin(client, sale_id, "schedule")).json()["state"] == "scheduled"

    early = await _buy(client, sale_id, "w-1", "early")
    assert early.status_code == 423
    assert early.json()["code"] == "SALE_NOT_LIVE"
    view = (await client.get(f"/sales/{sale_id}")).json()
    assert view["state"] == "scheduled"
    assert 0 < view["seconds_to_start"] <= 2

    async def recorded_state(state: str) -> bool:
        resp = await client.get(f"/admin/sales/{sale_id}", headers=admin_headers())
        return bool(resp.json()["state"] == state)

    await wait_for(lambda: recorded_state("live"), timeout=10)
    assert (await _buy(client, sale_id, "w-1", "on-time")).status_code == 202

    await wait_for(lambda: recorded_state("ended"), timeout=10)
    late = await _buy(client, sale_id, "w-2", "late")
    assert late.status_code == 423
    assert late.json()["code"] == "SALE_NOT_LIVE"

    audit = (await client.get("/admin/audit", params={"sale_id": sale_id}, headers=admin_headers())).json()
    system_actions = sorted(e["action"] for e in audit if e["actor"] == "system")
    assert system_actions == ["auto_end", "auto_start"]


async def test_pause_refuses_new_purchases_keeps_reservations_and_resume_continues(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=5)
    sale_id = sale["id"]
    first = await _buy(client, sale_id, "p-1", "k1", qty=3)
    assert first.status_code == 202
    rid = first.json()["reservation_id"]

    assert (await _admin(client, sale_id, "pause")).json()["state"] == "paused"
    paused = await _buy(client, sale_id, "p-2", "k2")
    assert paused.status_code == 423
    assert paused.json()["code"] == "SALE_NOT_LIVE"
    # The reservation made before the pause still stands, and so does its replay.
    assert (await redis.hget(reservations_key(sale_id), rid) or "").endswith("|reserved")
    replay = await _buy(client, sale_id, "p-1", "k1", qty=3)
    assert replay.status_code == 202
    assert replay.json()["reservation_id"] == rid
    assert (await sale_stats(client, sale_id))["remaining"] == 7

    assert (await _admin(client, sale_id, "resume")).json()["state"] == "live"
    assert (await sale_stats(client, sale_id))["remaining"] == 7
    assert (await _buy(client, sale_id, "p-2", "k3", qty=2)).status_code == 202
    assert (await sale_stats(client, sale_id))["remaining"] == 5


async def test_stopped_sale_refuses_purchases(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client)
    assert (await _admin(client, sale["id"], "stop")).json()["state"] == "ended"
    resp = await _buy(client, sale["id"], "s-1", "k")
    assert resp.status_code == 423
    assert (await _admin(client, sale["id"], "resume")).status_code == 409


@pytest.mark.parametrize(
    ("state_actions", "action"),
    [([], "pause"), ([], "resume"), (["start"], "schedule"), (["start", "stop"], "start")],
)
async def test_invalid_transitions_are_409(client: httpx.AsyncClient, state_actions: list[str], action: str) -> None:
    sale = await create_sale(client)
    for step in state_actions:
        assert (await _admin(client, sale["id"], step)).status_code == 200
    resp = await _admin(client, sale["id"], action)
    assert resp.status_code == 409
    assert resp.json()["code"] == "INVALID_STATE_TRANSITION"


async def test_update_only_before_live(client: httpx.AsyncClient) -> None:
    sale = await create_sale(client, quantity=5)
    ok = await client.patch(f"/admin/sales/{sale['id']}", json={"quantity": 50}, headers=admin_headers())
    assert ok.status_code == 200
    assert ok.json()["quantity"] == 50
    await _admin(client, sale["id"], "start")
    refused = await client.patch(f"/admin/sales/{sale['id']}", json={"price": 1}, headers=admin_headers())
    assert refused.status_code == 409
    assert refused.json()["code"] == "SALE_ALREADY_STARTED"
    assert (await client.get(f"/sales/{sale['id']}")).json()["price"] == sale["price"]


async def test_add_stock_makes_a_sold_out_sale_buyable(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=1, per_user_limit=5)
    assert (await _buy(client, sale["id"], "r-1", "a")).status_code == 202
    assert (await _buy(client, sale["id"], "r-1", "b")).json()["code"] == "SOLD_OUT"
    resp = await client.post(f"/admin/sales/{sale['id']}/stock", json={"units": 4}, headers=admin_headers())
    assert resp.status_code == 200
    assert resp.json()["quantity"] == 5
    assert (await _buy(client, sale["id"], "r-1", "c")).status_code == 202
    stats = (await client.get(f"/admin/sales/{sale['id']}/stats", headers=admin_headers())).json()
    assert (stats["quantity"], stats["remaining"], stats["reserved"]) == (5, 3, 2)


async def test_admin_calls_are_audited_with_before_and_after(client: httpx.AsyncClient) -> None:
    sale = await create_sale(client)
    await client.post(f"/admin/sales/{sale['id']}/start", headers=admin_headers("ops-bob"))
    await client.post(f"/admin/sales/{sale['id']}/pause", headers=admin_headers("ops-carol"))
    entries = (await client.get("/admin/audit", params={"sale_id": sale["id"]}, headers=admin_headers())).json()
    by_action = {e["action"]: e for e in entries}
    assert by_action["create"]["actor"] == "ops-alice"
    assert by_action["create"]["before"] is None
    assert by_action["create"]["after"]["state"] == "draft"
    assert by_action["start"]["actor"] == "ops-bob"
    assert (by_action["start"]["before"]["state"], by_action["start"]["after"]["state"]) == ("draft", "live")
    assert by_action["pause"]["actor"] == "ops-carol"
    assert (by_action["pause"]["before"]["state"], by_action["pause"]["after"]["state"]) == ("live", "paused")
    assert all(e["at"] for e in entries)


async def test_admin_create_with_idempotency_key_creates_once(client: httpx.AsyncClient) -> None:
    headers = {**admin_headers(), "Idempotency-Key": "create-once-1"}
    from tests.conftest import sale_body

    body = sale_body(title="Once")
    first, second = await asyncio.gather(
        client.post("/admin/sales", json=body, headers=headers),
        client.post("/admin/sales", json=body, headers=headers),
    )
    codes = sorted([first.status_code, second.status_code])
    assert codes in ([201, 201], [201, 409])
    third = await client.post("/admin/sales", json=body, headers=headers)
    assert third.status_code == 201
    assert third.json()["id"] == first.json().get("id", second.json().get("id"))
    listed = (await client.get("/admin/sales", headers=admin_headers())).json()
    assert sum(1 for s in listed if s["title"] == "Once") == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/admin/sales"),
        ("GET", "/admin/sales"),
        ("POST", "/admin/sales/1/start"),
        ("POST", "/admin/sales/1/pause"),
        ("POST", "/admin/sales/1/stock"),
        ("GET", "/admin/sales/1/stats"),
        ("GET", "/admin/audit"),
        ("PATCH", "/admin/sales/1"),
    ],
)
async def test_admin_routes_need_the_admin_role(client: httpx.AsyncClient, method: str, path: str) -> None:
    no_token = await client.request(method, path, json={})
    assert no_token.status_code == 401
    assert no_token.json()["code"] == "UNAUTHENTICATED"
    customer = await client.request(method, path, json={}, headers=customer_headers("mallory"))
    assert customer.status_code == 403
    assert customer.json()["code"] == "FORBIDDEN"
    forged = await client.request(method, path, json={}, headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 401


async def test_purchase_needs_a_token(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client)
    resp = await client.post(f"/sales/{sale['id']}/purchase", json={"quantity": 1}, headers={"Idempotency-Key": "k"})
    assert resp.status_code == 401
    assert resp.headers["content-type"].startswith("application/problem+json")


async def test_storefront_lists_live_and_upcoming_sales_with_countdown(client: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    live = await live_sale(client, title="Live one")
    upcoming = await create_sale(
        client,
        title="Upcoming one",
        starts_at=(now + timedelta(hours=1)).isoformat(),
        ends_at=(now + timedelta(hours=2)).isoformat(),
    )
    await _admin(client, upcoming["id"], "schedule")
    draft = await create_sale(client, title="Draft one")
    listed = {s["id"]: s for s in (await client.get("/sales")).json()}
    assert live["id"] in listed
    assert upcoming["id"] in listed
    assert draft["id"] not in listed
    assert listed[live["id"]]["state"] == "live"
    assert listed[upcoming["id"]]["state"] == "scheduled"
    assert 3500 < listed[upcoming["id"]]["seconds_to_start"] <= 3600
    assert listed[upcoming["id"]]["remaining"] == upcoming["quantity"]
    server_time = datetime.fromisoformat(listed[live["id"]]["server_time"])
    assert abs((server_time - datetime.now(UTC)).total_seconds()) < 5


async def test_stock_left_in_redis_by_another_sale_with_the_same_id_is_not_adopted(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    sale = await create_sale(client, quantity=10)
    # What a recreated database would meet: Redis still holds an older sale under the same id.
    await redis.hset(sale_key(sale["id"]), mapping={"remaining": 3, "quantity": 3, "incarnation": "1"})
    resp = await _admin(client, sale["id"], "start")
    assert resp.status_code == 409
    assert resp.json()["code"] == "STALE_STOCK_STATE"
    admin_view = await client.get(f"/admin/sales/{sale['id']}", headers=admin_headers())
    assert admin_view.json()["state"] == "draft"
    assert await redis.hget(sale_key(sale["id"]), "remaining") == "3"

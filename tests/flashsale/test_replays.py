"""A replay of an accepted purchase gets its first answer in every sale state: live, sold out, paused, ended."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from services.common.contracts import purchase_stream
from services.flashsale.store import reservations_key
from tests.conftest import admin_headers, customer_headers, live_sale, sale_stats


def _url(sale_id: int) -> str:
    return f"/sales/{sale_id}/purchase"


async def _buy(client: httpx.AsyncClient, sale_id: int, user: str, key: str, qty: int = 1) -> httpx.Response:
    return await client.post(_url(sale_id), json={"quantity": qty}, headers=customer_headers(user, key))


async def test_a_replay_after_sell_out_gets_its_first_answer_and_a_new_key_gets_sold_out(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    sale = await live_sale(client, quantity=2, per_user_limit=2)
    first = await _buy(client, sale["id"], "replay-so", "click-1", qty=2)
    assert first.status_code == 202
    refused = await _buy(client, sale["id"], "replay-other", "k")
    assert (refused.status_code, refused.json()["code"]) == (409, "SOLD_OUT")

    replay = await _buy(client, sale["id"], "replay-so", "click-1", qty=2)
    assert replay.status_code == 202, replay.text
    assert replay.content == first.content
    reused = await _buy(client, sale["id"], "replay-so", "click-1", qty=1)
    assert (reused.status_code, reused.json()["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    # Nothing moved: one reservation, one event, no unit back.
    assert await redis.hlen(reservations_key(sale["id"])) == 1
    assert await redis.xlen(purchase_stream(sale["id"])) == 1
    assert (await sale_stats(client, sale["id"]))["remaining"] == 0


async def test_concurrent_replays_after_sell_out_all_get_the_first_answer(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=1, per_user_limit=1)
    first = await _buy(client, sale["id"], "replay-crowd", "click-1")
    assert first.status_code == 202
    replays = await asyncio.gather(*(_buy(client, sale["id"], "replay-crowd", "click-1") for _ in range(30)))
    others = await asyncio.gather(*(_buy(client, sale["id"], f"replay-late-{n}", "click-1") for n in range(10)))
    assert {r.status_code for r in replays} == {202}
    assert {r.content for r in replays} == {first.content}
    assert {r.json()["code"] for r in others} == {"SOLD_OUT"}


@pytest.mark.parametrize("action", ["pause", "stop"])
async def test_a_replay_gets_its_first_answer_when_the_sale_is_paused_or_ended(
    client: httpx.AsyncClient, action: str
) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=3)
    first = await _buy(client, sale["id"], f"replay-{action}", "click-1", qty=2)
    assert first.status_code == 202
    moved = await client.post(f"/admin/sales/{sale['id']}/{action}", headers=admin_headers())
    assert moved.status_code == 200, moved.text

    replay = await _buy(client, sale["id"], f"replay-{action}", "click-1", qty=2)
    assert replay.status_code == 202, replay.text
    assert replay.content == first.content
    reused = await _buy(client, sale["id"], f"replay-{action}", "click-1", qty=1)
    assert (reused.status_code, reused.json()["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    fresh = await _buy(client, sale["id"], f"replay-{action}", "click-2")
    assert (fresh.status_code, fresh.json()["code"]) == (423, "SALE_NOT_LIVE")


async def test_a_replay_after_a_sold_out_sale_was_paused_gets_its_first_answer(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=1, per_user_limit=1)
    first = await _buy(client, sale["id"], "replay-so-paused", "click-1")
    assert first.status_code == 202
    assert (await client.post(f"/admin/sales/{sale['id']}/pause", headers=admin_headers())).status_code == 200
    replay = await _buy(client, sale["id"], "replay-so-paused", "click-1")
    assert (replay.status_code, replay.content) == (202, first.content)

"""Bad input gets a clear 4xx problem+json answer and changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from services.common.contracts import purchase_stream
from services.flashsale.store import bought_key, reservations_key
from tests.conftest import admin_headers, customer_headers, live_sale, sale_body, sale_stats


@pytest.fixture
async def sale(client: httpx.AsyncClient) -> dict[str, Any]:
    return await live_sale(client, quantity=50, per_user_limit=5)


async def _snapshot(client: httpx.AsyncClient, redis: Redis, sale_id: int) -> tuple[Any, ...]:
    stats = await sale_stats(client, sale_id)
    return (
        stats["remaining"],
        stats["reserved"],
        await redis.xlen(purchase_stream(sale_id)),
        await redis.hlen(reservations_key(sale_id)),
        await redis.hlen(bought_key(sale_id)),
    )


def _is_problem(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["detail"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"quantity": 0}, 422, "VALIDATION_ERROR"),
        ({"quantity": -1}, 422, "VALIDATION_ERROR"),
        ({"quantity": 10**12}, 422, "VALIDATION_ERROR"),
        ({"quantity": 101}, 422, "VALIDATION_ERROR"),
        ({"quantity": 1.5}, 422, "VALIDATION_ERROR"),
        ({"quantity": "2"}, 422, "VALIDATION_ERROR"),
        ({"quantity": True}, 422, "VALIDATION_ERROR"),
        ({"quantity": None}, 422, "VALIDATION_ERROR"),
        ({}, 422, "VALIDATION_ERROR"),
        ({"quantity": 1, "price": 1}, 422, "VALIDATION_ERROR"),
        ([1], 422, "VALIDATION_ERROR"),
        ({"quantity": 1, "coupon_ids": ["c"] * 6}, 422, "VALIDATION_ERROR"),
        ({"quantity": 1, "coupon_ids": ["not a coupon id!"]}, 422, "VALIDATION_ERROR"),
        ({"quantity": 1, "coupon_ids": "c1"}, 422, "VALIDATION_ERROR"),
    ],
)
async def test_bad_quantity_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, redis: Redis, sale: dict[str, Any], body: Any, status: int, code: str
) -> None:
    before = await _snapshot(client, redis, sale["id"])
    resp = await client.post(f"/sales/{sale['id']}/purchase", json=body, headers=customer_headers("bad", key="k"))
    _is_problem(resp, status, code)
    assert await _snapshot(client, redis, sale["id"]) == before


async def test_malformed_json_is_400(client: httpx.AsyncClient, redis: Redis, sale: dict[str, Any]) -> None:
    before = await _snapshot(client, redis, sale["id"])
    resp = await client.post(
        f"/sales/{sale['id']}/purchase",
        content=b'{"quantity": 1',
        headers={**customer_headers("bad", key="k"), "content-type": "application/json"},
    )
    _is_problem(resp, 400, "MALFORMED_JSON")
    assert await _snapshot(client, redis, sale["id"]) == before


async def test_missing_or_bad_idempotency_key_is_400(
    client: httpx.AsyncClient, redis: Redis, sale: dict[str, Any]
) -> None:
    before = await _snapshot(client, redis, sale["id"])
    url = f"/sales/{sale['id']}/purchase"
    _is_problem(
        await client.post(url, json={"quantity": 1}, headers=customer_headers("bad")), 400, "IDEMPOTENCY_KEY_REQUIRED"
    )
    _is_problem(
        await client.post(url, json={"quantity": 1}, headers=customer_headers("bad", key="x" * 201)),
        400,
        "IDEMPOTENCY_KEY_REQUIRED",
    )
    assert await _snapshot(client, redis, sale["id"]) == before


async def test_oversized_body_is_413(client: httpx.AsyncClient, redis: Redis, sale: dict[str, Any]) -> None:
    before = await _snapshot(client, redis, sale["id"])
    padding = "x" * 100_000
    resp = await client.post(
        f"/sales/{sale['id']}/purchase",
        content=f'{{"quantity": 1, "pad": "{padding}"}}'.encode(),
        headers={**customer_headers("bad", key="k"), "content-type": "application/json"},
    )
    _is_problem(resp, 413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 10_000
        yield b'{"quantity": 1}'

    streamed = await client.post(
        f"/sales/{sale['id']}/purchase",
        content=chunks(),
        headers={**customer_headers("bad", key="k2"), "content-type": "application/json"},
    )
    _is_problem(streamed, 413, "PAYLOAD_TOO_LARGE")
    assert await _snapshot(client, redis, sale["id"]) == before


async def test_unknown_sale_is_404(client: httpx.AsyncClient) -> None:
    resp = await client.post("/sales/987654321/purchase", json={"quantity": 1}, headers=customer_headers("u", key="k"))
    _is_problem(resp, 404, "SALE_NOT_FOUND")
    _is_problem(await client.get("/sales/987654321"), 404, "SALE_NOT_FOUND")
    bad_id = await client.post("/sales/abc/purchase", json={"quantity": 1}, headers=customer_headers("u", key="k"))
    _is_problem(bad_id, 422, "VALIDATION_ERROR")
    huge_id = await client.post(
        f"/sales/{2**70}/purchase", json={"quantity": 1}, headers=customer_headers("u", key="k")
    )
    _is_problem(huge_id, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "overrides",
    [
        {"price": 10.5},
        {"price": -1},
        {"price": "100"},
        {"quantity": 0},
        {"quantity": 10**9},
        {"per_user_limit": 0},
        {"low_stock_threshold_pct": 101},
        {"low_stock_policy": "panic"},
        {"price": 30_000, "original_price": 20_000},
        {"starts_at": "2030-01-02T00:00:00+00:00", "ends_at": "2030-01-01T00:00:00+00:00"},
        {"starts_at": "2030-01-01T00:00:00"},
        {"sku": ""},
        {"sku": "has spaces"},
        {"currency": "usd"},
        {"surprise": 1},
    ],
)
async def test_bad_sale_is_refused_and_nothing_is_created(client: httpx.AsyncClient, overrides: dict[str, Any]) -> None:
    title = f"bad-sale-{sorted(overrides)}"
    resp = await client.post("/admin/sales", json=sale_body(title=title, **overrides), headers=admin_headers())
    _is_problem(resp, 422, "VALIDATION_ERROR")
    listed = (await client.get("/admin/sales", params={"limit": 500}, headers=admin_headers())).json()
    assert not [s for s in listed if s["title"] == title]


async def test_bad_add_stock_changes_nothing(client: httpx.AsyncClient, redis: Redis, sale: dict[str, Any]) -> None:
    before = await _snapshot(client, redis, sale["id"])
    for units in (0, -5, 2.5, "3"):
        resp = await client.post(f"/admin/sales/{sale['id']}/stock", json={"units": units}, headers=admin_headers())
        _is_problem(resp, 422, "VALIDATION_ERROR")
    assert await _snapshot(client, redis, sale["id"]) == before
    assert (await sale_stats(client, sale["id"]))["quantity"] == 50

"""Every body-taking route of every service and of the gateway's own app answers a body that is not JSON with
415 and broken UTF-8 with 400 MALFORMED_JSON, the same way; JSON media types with parameters or a `+json`
suffix go through; a request without a body is left alone."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from gateway.config import GatewaySettings
from gateway.main import create_app as create_gateway
from services.common.contracts import purchase_stream
from services.coupon.config import CouponSettings
from services.coupon.main import create_app as create_coupon
from services.flashsale.config import FlashSaleSettings
from services.flashsale.main import create_app as create_flashsale
from services.inventory.config import InventorySettings
from services.inventory.main import create_app as create_inventory
from services.order.config import OrderSettings
from services.order.main import create_app as create_order
from services.paysim.config import PaySimSettings
from services.paysim.main import create_app as create_paysim
from tests.conftest import admin_headers, customer_headers, live_sale, sale_stats

# Each app as it is built for production; the refusals come before any handler, so no lifespan is needed.
APPS: dict[str, Callable[[], Any]] = {
    "flashsale": lambda: create_flashsale(FlashSaleSettings(env="test")),
    "order": lambda: create_order(OrderSettings(env="test")),
    "coupon": lambda: create_coupon(CouponSettings(env="test")),
    "inventory": lambda: create_inventory(InventorySettings(env="test")),
    "paysim": lambda: create_paysim(PaySimSettings(env="test")),
    "gateway": lambda: create_gateway(GatewaySettings(env="test", dev_tokens=True)),
}
BODY_METHODS = {"post", "put", "patch"}
NOT_UTF8 = b'{"quantity": 1, "note": "caf\xe9 \xff"}'


def body_operations(app: Any) -> list[tuple[str, str]]:
    """(method, concrete path) of every operation of the app's OpenAPI document that can carry a body."""
    api = getattr(app, "api", app)  # the gateway wraps its FastAPI app
    operations = []
    for path, methods in api.openapi()["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        operations.extend((method.upper(), concrete) for method in methods if method in BODY_METHODS)
    return operations


def assert_problem(resp: httpx.Response, status: int, code: str, where: str) -> dict[str, Any]:
    assert resp.status_code == status, f"{where}: {resp.status_code} {resp.text}"
    assert resp.headers["content-type"].startswith("application/problem+json"), where
    body: dict[str, Any] = resp.json()
    assert body["code"] == code and body["status"] == status, where
    return body


@pytest.mark.parametrize("name", sorted(APPS))
async def test_every_body_route_refuses_text_and_broken_utf8_the_same_way(name: str) -> None:
    app = APPS[name]()
    operations = body_operations(app)
    assert operations, f"{name} has no route that takes a body"
    headers = {**admin_headers(), "Idempotency-Key": "json-edges"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        for method, path in operations:
            where = f"{name} {method} {path}"
            for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/jsonp"):
                resp = await client.request(
                    method, path, content=b'{"quantity": 1}', headers={**headers, "content-type": content_type}
                )
                body = assert_problem(resp, 415, "UNSUPPORTED_MEDIA_TYPE", f"{where} as {content_type}")
                assert "application/json" in body["detail"]
                assert resp.headers["accept"] == "application/json"
            untyped = await client.request(method, path, content=b'{"quantity": 1}', headers=headers)
            assert_problem(untyped, 415, "UNSUPPORTED_MEDIA_TYPE", f"{where} without a Content-Type")
            for content_type in ("application/json", "application/json; charset=utf-8", "application/merge-patch+json"):
                resp = await client.request(
                    method, path, content=NOT_UTF8, headers={**headers, "content-type": content_type}
                )
                body = assert_problem(resp, 400, "MALFORMED_JSON", f"{where} with broken UTF-8 as {content_type}")
                assert "UTF-8" in body["detail"]


async def test_the_gateway_token_route_takes_json_with_a_charset_or_a_json_suffix() -> None:
    app = create_gateway(GatewaySettings(env="test", dev_tokens=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        for content_type in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.demo+json"):
            resp = await client.post(
                "/api/auth/token", content=b'{"user_id": "u-json"}', headers={"content-type": content_type}
            )
            assert resp.status_code == 200, f"{content_type}: {resp.text}"
            assert resp.json()["user_id"] == "u-json"
        text = await client.post(
            "/api/auth/token", content=b'{"user_id": "u-json"}', headers={"content-type": "text/plain"}
        )
        assert_problem(text, 415, "UNSUPPORTED_MEDIA_TYPE", "token as text")


async def test_a_purchase_sent_as_text_or_broken_utf8_sells_nothing_and_a_charset_is_fine(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=5)
    url = f"/sales/{sale['id']}/purchase"
    refused = [
        ("text/plain", b'{"quantity": 1}', 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("application/json", b'{"quantity": 1, "x": "\xc3\x28"}', 400, "MALFORMED_JSON"),
    ]
    for n, (content_type, content, status, code) in enumerate(refused):
        resp = await client.post(
            url, content=content, headers={**customer_headers("json-edge", key=f"k{n}"), "content-type": content_type}
        )
        assert_problem(resp, status, code, content_type)
    stats = await sale_stats(client, sale["id"])
    assert stats["remaining"] == 10 and stats["reserved"] == 0
    assert await redis.xlen(purchase_stream(sale["id"])) == 0

    accepted = await client.post(
        url,
        content=b'{"quantity": 2}',
        headers={**customer_headers("json-edge", key="k-ok"), "content-type": "application/json; charset=utf-8"},
    )
    assert accepted.status_code == 202, accepted.text
    assert (await sale_stats(client, sale["id"]))["remaining"] == 8


async def test_a_post_without_a_body_is_left_alone_whatever_its_content_type(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=10)
    resp = await client.post(
        f"/admin/sales/{sale['id']}/pause", headers={**admin_headers(), "content-type": "text/plain"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "paused"

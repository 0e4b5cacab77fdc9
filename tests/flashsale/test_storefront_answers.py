"""Storefront answers are complete: the caller's own numbers, a limit refusal that says what was asked,
and one SKU grammar shared with the warehouse."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.flashsale.core import SaleCore
from services.flashsale.lifecycle import transition
from services.flashsale.service import FlashSaleService
from services.inventory.schemas import SkuCreate
from tests.conftest import admin_headers, create_sale, customer_headers, live_sale, sale_body


async def _buy(client: httpx.AsyncClient, sale_id: int, user: str, key: str, qty: int) -> httpx.Response:
    return await client.post(f"/sales/{sale_id}/purchase", json={"quantity": qty}, headers=customer_headers(user, key))


async def _me(client: httpx.AsyncClient, sale_id: int, user: str) -> dict[str, Any]:
    resp = await client.get(f"/sales/{sale_id}/me", headers=customer_headers(user))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_a_buyer_sees_what_they_bought_and_how_many_more_they_may_buy(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=3)
    assert await _me(client, sale["id"], "me-buyer") == {
        "sale_id": sale["id"],
        "state": "live",
        "bought": 0,
        "limit": 3,
        "may_buy": 3,
        "remaining": 10,
    }
    assert (await _buy(client, sale["id"], "me-buyer", "k1", 2)).status_code == 202
    mine = await _me(client, sale["id"], "me-buyer")
    assert (mine["bought"], mine["limit"], mine["may_buy"]) == (2, 3, 1)
    # Another buyer sees only their own numbers.
    theirs = await _me(client, sale["id"], "me-other")
    assert (theirs["bought"], theirs["may_buy"], theirs["remaining"]) == (0, 3, 8)


async def test_a_buyer_may_buy_no_more_than_the_stock_left_and_nothing_once_ended(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=3, per_user_limit=3)
    assert (await _buy(client, sale["id"], "me-crowd", "k1", 2)).status_code == 202
    assert (await _me(client, sale["id"], "me-late"))["may_buy"] == 1
    assert (await client.post(f"/admin/sales/{sale['id']}/stop", headers=admin_headers())).status_code == 200
    ended = await _me(client, sale["id"], "me-late")
    assert (ended["state"], ended["may_buy"]) == ("ended", 0)


async def test_my_numbers_need_a_token_and_a_known_sale(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=3)
    anonymous = await client.get(f"/sales/{sale['id']}/me")
    assert anonymous.status_code == 401
    unknown = await client.get("/sales/987654321/me", headers=customer_headers("me-x"))
    assert (unknown.status_code, unknown.json()["code"]) == (404, "SALE_NOT_FOUND")


async def test_a_limit_refusal_says_what_was_asked_what_is_held_and_the_limit(client: httpx.AsyncClient) -> None:
    sale = await live_sale(client, quantity=10, per_user_limit=2)
    over = await _buy(client, sale["id"], "lim-asked", "k1", 3)
    assert over.status_code == 403
    body = over.json()
    assert body["code"] == "PURCHASE_LIMIT_EXCEEDED"
    assert (body["requested"], body["bought"], body["limit"]) == (3, 0, 2)
    assert "asked for 3" in body["detail"] and "hold 0" in body["detail"] and "at most 2" in body["detail"]
    assert (await _buy(client, sale["id"], "lim-asked", "k2", 1)).status_code == 202
    again = (await _buy(client, sale["id"], "lim-asked", "k3", 2)).json()
    assert (again["requested"], again["bought"], again["limit"]) == (2, 1, 2)


def _valid_in_inventory(sku: str) -> bool:
    try:
        SkuCreate(sku=sku, name="n")
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    "sku", ["ACME:PHONE:128GB", "a", "SKU.1_b-2", "X" * 64, "X" * 65, ".hidden", "-dash", "has space", "é", ""]
)
async def test_a_sku_code_is_valid_in_flashsale_exactly_when_it_is_valid_in_inventory(
    client: httpx.AsyncClient, sku: str
) -> None:
    resp = await client.post("/admin/sales", json=sale_body(sku=sku, title=f"sku {sku!r}"), headers=admin_headers())
    if _valid_in_inventory(sku):
        assert resp.status_code == 201, resp.text
        assert resp.json()["sku"] == sku
    else:
        assert (resp.status_code, resp.json()["code"]) == (422, "VALIDATION_ERROR")


this_refresh: contextvars.ContextVar[bool] = contextvars.ContextVar("this_refresh", default=False)


async def test_a_sale_started_while_the_catalog_is_being_read_stays_on_the_storefront(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    service: FlashSaleService = app.state.service
    core: SaleCore = service.core
    sale = await create_sale(client, quantity=3)
    real = core.sessions
    started: list[dict[str, Any]] = []

    @contextlib.asynccontextmanager
    async def session_that_sees_a_start_after_its_read() -> AsyncIterator[AsyncSession]:
        async with real() as session:
            read = session.scalars

            async def scalars(*args: Any, **kwargs: Any) -> Any:
                rows = await read(*args, **kwargs)
                # The rows are read (the sale is a draft in them); then an admin starts it. Only in this
                # test's own refresh: the replica's periodic refresh runs in another task.
                if this_refresh.get() and not started:
                    started.append(await transition(core, actor="ops-alice", sale_id=sale["id"], action="start"))
                return rows

            monkeypatch.setattr(session, "scalars", scalars)
            yield session

    class Sessions:
        begin = real.begin
        __call__ = staticmethod(session_that_sees_a_start_after_its_read)

    monkeypatch.setattr(core, "sessions", Sessions())
    this_refresh.set(True)
    await service.refresh_catalog()
    monkeypatch.undo()
    assert started and started[0]["state"] == "live"
    shown = await client.get(f"/sales/{sale['id']}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["state"] == "live"

"""Opening a sale (start, schedule) fails safe at every step: whatever step fails, the sale either does not
sell, or sells and its purchase stream is in the registry the order service reads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.flashsale.core import SaleCore
from services.flashsale.lifecycle import transition
from services.flashsale.store import STREAM_REGISTRY, events_stream, sale_key
from tests.conftest import admin_headers, create_sale, customer_headers, wait_for


class FaultyStep:
    """A real step of the opening with a fault on its first call for one sale: before it runs, or after
    (it ran, its answer was lost)."""

    def __init__(self, step: Callable[..., Awaitable[Any]], fault: str, applies: Callable[..., bool]) -> None:
        self.step, self.fault, self.applies, self.failed = step, fault, applies, 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed or not self.applies(*args, **kwargs):
            return await self.step(*args, **kwargs)
        self.failed += 1
        if self.fault == "before":
            raise RedisConnectionError("Connection reset by peer")
        await self.step(*args, **kwargs)
        raise RedisTimeoutError("Timeout reading from Redis")


@pytest.fixture
def core(app: FastAPI) -> SaleCore:
    flashsale: SaleCore = app.state.service.core
    return flashsale


async def _state_and_sells(client: httpx.AsyncClient, redis: Redis, sale_id: int, key: str) -> tuple[str, bool]:
    """The recorded state, and whether a purchase is accepted; an accepted one must be read by the orders."""
    record = (await client.get(f"/admin/sales/{sale_id}", headers=admin_headers())).json()["state"]
    bought = await client.post(
        f"/sales/{sale_id}/purchase", json={"quantity": 1}, headers=customer_headers(f"open-{sale_id}", key)
    )
    sells = bought.status_code == 202
    if sells:
        assert await redis.sismember(STREAM_REGISTRY, events_stream(sale_id)), "a purchase nobody will read"
    return record, sells


async def _start(client: httpx.AsyncClient, sale_id: int) -> httpx.Response:
    return await client.post(f"/admin/sales/{sale_id}/start", headers=admin_headers())


async def _assert_not_opened_then_retry_opens(client: httpx.AsyncClient, redis: Redis, sale_id: int) -> None:
    assert await _state_and_sells(client, redis, sale_id, "k-after-fault") == ("draft", False)
    assert (await _start(client, sale_id)).status_code == 200
    assert await _state_and_sells(client, redis, sale_id, "k-after-retry") == ("live", True)


@pytest.mark.parametrize("fault", ["before", "after"])
async def test_a_failed_stream_registration_leaves_a_sale_that_does_not_sell(
    client: httpx.AsyncClient, redis: Redis, core: SaleCore, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    sale = await create_sale(client, quantity=5)
    stream = events_stream(sale["id"])
    step = FaultyStep(core.redis.sadd, fault, lambda name, *values: name == STREAM_REGISTRY and stream in values)
    monkeypatch.setattr(core.redis, "sadd", step)
    answer = await _start(client, sale["id"])
    assert (answer.status_code, step.failed) == (503, 1)
    await _assert_not_opened_then_retry_opens(client, redis, sale["id"])


@pytest.mark.parametrize("fault", ["before", "after"])
async def test_a_failed_stock_load_leaves_a_sale_that_does_not_sell(
    client: httpx.AsyncClient, redis: Redis, core: SaleCore, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    sale = await create_sale(client, quantity=5)
    step = FaultyStep(core.store._warm, fault, lambda **kw: kw["keys"][0] == sale_key(sale["id"]))
    monkeypatch.setattr(core.store, "_warm", step)
    answer = await _start(client, sale["id"])
    assert (answer.status_code, step.failed) == (503, 1)
    await _assert_not_opened_then_retry_opens(client, redis, sale["id"])


async def test_a_record_that_fails_to_commit_after_the_stock_load_leaves_a_sale_that_does_not_sell(
    client: httpx.AsyncClient, redis: Redis, core: SaleCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sale = await create_sale(client, quantity=5)
    real_audit = core.audit

    async def audit_then_fail(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("action") == "start" and kwargs.get("sale_id") == sale["id"]:
            raise ConnectionResetError("the database connection dropped before the commit")
        return await real_audit(*args, **kwargs)

    monkeypatch.setattr(core, "audit", audit_then_fail)
    with pytest.raises(ConnectionResetError):
        await transition(core, actor="ops-alice", sale_id=sale["id"], action="start")
    monkeypatch.undo()
    await _assert_not_opened_then_retry_opens(client, redis, sale["id"])


async def test_a_start_whose_gate_write_failed_is_answered_503_and_opens_once_redis_follows_the_record(
    client: httpx.AsyncClient, redis: Redis, core: SaleCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sale = await create_sale(client, quantity=5)
    step = FaultyStep(core.store.advance_state, "before", lambda sale_id, **kw: sale_id == sale["id"])
    monkeypatch.setattr(core.store, "advance_state", step)
    answer = await _start(client, sale["id"])
    assert (answer.status_code, answer.json()["code"], step.failed) == (503, "STOCK_UNAVAILABLE", 1)
    assert "recorded as live" in answer.json()["detail"]
    assert await _state_and_sells(client, redis, sale["id"], "k-1") == ("live", False)
    # The settlement job brings Redis to the recorded state.
    await wait_for(lambda: _sells(client, redis, sale["id"]), timeout=15, interval=0.2)


async def test_a_schedule_whose_gate_write_failed_still_opens_at_its_start(
    client: httpx.AsyncClient, redis: Redis, core: SaleCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    sale = await create_sale(
        client,
        quantity=5,
        starts_at=(now + timedelta(seconds=1)).isoformat(),
        ends_at=(now + timedelta(hours=1)).isoformat(),
    )
    step = FaultyStep(core.store.advance_state, "before", lambda sale_id, **kw: sale_id == sale["id"])
    monkeypatch.setattr(core.store, "advance_state", step)
    answer = await client.post(f"/admin/sales/{sale['id']}/schedule", headers=admin_headers())
    assert (answer.status_code, step.failed) == (503, 1)
    await wait_for(lambda: _sells(client, redis, sale["id"]), timeout=15, interval=0.2)


async def _sells(client: httpx.AsyncClient, redis: Redis, sale_id: int) -> bool:
    _record, sells = await _state_and_sells(client, redis, sale_id, "k-eventually")
    return sells

"""Low-stock alerts through the outbox (stream + signed webhooks), replenishment reminders, and the periodic
reconciliation, with real Redis, PostgreSQL and a real webhook receiver."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from pydantic import ValidationError
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from services.common.contracts import ALERTS_STREAM, decode_event
from services.common.migrate import upgrade
from services.inventory.config import InventorySettings
from services.inventory.main import create_app
from services.inventory.models import AlertOutbox, AuditEntry
from services.inventory.store import stock_key
from tests.conftest import (
    TEST_REDIS_URL,
    admin_headers,
    customer_headers,
    db_name_for,
    db_url_for,
    drop_database,
    free_port,
    serving,
    wait_for,
)

ALERTS_DB_URL = db_url_for("inventory_alerts")
OUTAGE_DB_URL = db_url_for("inventory_outage")
SIGNING_KEY = "test-inventory-webhook-key"
LOW = "stock.low"
REMINDER = "stock.replenish_reminder"
# Nothing listens on port 1: connections are refused at once, like a Redis that is down.
BROKEN_REDIS_URL = "redis://127.0.0.1:1/5"


class SignedReceiver:
    """A real HTTP server recording every call; it can fail or reject chosen SKUs' events."""

    def __init__(self) -> None:
        self.port = free_port()
        self.calls: list[dict[str, Any]] = []
        self.accepted: list[tuple[bytes, str | None, dict[str, Any]]] = []
        self.fail: dict[tuple[str, str], int] = {}
        self.reject: set[str] = set()
        self.down_for: set[str] = set()
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            event = json.loads(body)
            self.calls.append(event)
            key = (event.get("sku"), event.get("type"))
            if event.get("sku") in self.reject:
                return Response(status_code=400)
            if event.get("sku") in self.down_for:
                return Response(status_code=503)
            if self.fail.get(key, 0) > 0:
                self.fail[key] -= 1
                return Response(status_code=503)
            self.accepted.append((body, request.headers.get("x-flashsale-signature"), event))
            return Response(status_code=204)

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self, sku: str, event_type: str) -> list[dict[str, Any]]:
        """Accepted events of one SKU and type."""
        return [e for _b, _s, e in self.accepted if e.get("sku") == sku and e.get("type") == event_type]

    def calls_for(self, sku: str) -> list[dict[str, Any]]:
        """Every call about a SKU, failed ones included."""
        return [e for e in self.calls if e.get("sku") == sku]


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[SignedReceiver]:
    """The webhook receiver on a real port."""
    hook = SignedReceiver()
    async with serving(hook.server):
        yield hook


def _settings(receiver: SignedReceiver, **overrides: Any) -> InventorySettings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": ALERTS_DB_URL,
        "redis_url": TEST_REDIS_URL,
        "replica_id": "inv-alerts-test",
        "alert_webhooks": receiver.url,
        "webhook_signing_key": SIGNING_KEY,
        "alert_relay_interval_seconds": 0.1,
        "alert_retry_base_seconds": 0.1,
        "alert_retry_max_seconds": 0.4,
        "alert_max_attempts": 4,
        "reminder_interval_seconds": 1.0,
        "reminder_check_seconds": 0.2,
        "reconcile_interval_seconds": 0.3,
        **overrides,
    }
    return InventorySettings(**values)


@asynccontextmanager
async def running(settings: InventorySettings) -> AsyncIterator[httpx.AsyncClient]:
    """An inventory app with its lifespan (and periodic jobs) running, and a client for it."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://inventory") as client:
            yield client


@pytest.fixture(scope="module")
async def engine(redis: Redis) -> AsyncIterator[AsyncEngine]:
    """A freshly migrated database of this module's own, and an engine to look into it."""
    await drop_database(db_name_for("inventory_alerts"))
    await asyncio.to_thread(upgrade, "inventory", ALERTS_DB_URL)
    db = create_async_engine(ALERTS_DB_URL)
    yield db
    await db.dispose()


@pytest.fixture(scope="module")
async def inventory(engine: AsyncEngine, receiver: SignedReceiver) -> AsyncIterator[httpx.AsyncClient]:
    """The inventory service in-process with fast relay, reminder and reconciliation jobs."""
    async with running(_settings(receiver)) as client:
        yield client


async def _sku(inventory: httpx.AsyncClient, stock: int, threshold: int | None = 5) -> str:
    code = f"ALERT-{os.urandom(4).hex()}"
    body = {"sku": code, "name": "Alert phone", "initial_stock": stock, "low_stock_threshold": threshold}
    resp = await inventory.post("/admin/skus", json=body, headers=admin_headers())
    assert resp.status_code == 201, resp.text
    return code


async def _take(inventory: httpx.AsyncClient, sku: str, units: int) -> dict[str, Any]:
    """Remove available units the way a stock-take would (no Redis needed on the way)."""
    resp = await inventory.post(
        f"/admin/skus/{sku}/adjust", json={"delta": -units, "reason": "sold in store"}, headers=admin_headers()
    )
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def _restock(inventory: httpx.AsyncClient, sku: str, units: int) -> dict[str, Any]:
    resp = await inventory.post(
        f"/admin/skus/{sku}/restock", json={"quantity": units, "reason": "truck"}, headers=admin_headers()
    )
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def _stream(redis: Redis, sku: str, event_type: str) -> list[dict[str, Any]]:
    events = [decode_event(fields) for _id, fields in await redis.xrange(ALERTS_STREAM)]
    return [e for e in events if e.get("source") == "inventory" and e.get("sku") == sku and e["type"] == event_type]


async def _outbox(engine: AsyncEngine, sku: str, event_type: str = LOW) -> list[AlertOutbox]:
    async with AsyncSession(engine) as session:
        query = select(AlertOutbox).where(AlertOutbox.sku == sku, AlertOutbox.event_type == event_type)
        return list(await session.scalars(query.order_by(AlertOutbox.id)))


async def _settled(engine: AsyncEngine, sku: str, event_type: str = LOW) -> list[AlertOutbox]:
    """The SKU's outbox rows once every one is streamed and delivered (or given up)."""

    async def done() -> list[AlertOutbox] | None:
        rows = await _outbox(engine, sku, event_type)
        finished = all(r.streamed_at is not None and (r.delivered_at or r.failed_at) for r in rows)
        return rows if rows and finished else None

    rows: list[AlertOutbox] = await wait_for(done, timeout=10)
    return rows


async def _reminders(inventory: httpx.AsyncClient, sku: str, include_resolved: bool = False) -> list[dict[str, Any]]:
    resp = await inventory.get(
        "/admin/replenishment",
        params={"sku": sku, "include_resolved": str(include_resolved).lower()},
        headers=admin_headers(),
    )
    assert resp.status_code == 200, resp.text
    out: list[dict[str, Any]] = resp.json()
    return out


def _signed(body: bytes, signature: str | None) -> bool:
    expected = hmac.new(SIGNING_KEY.encode(), body, hashlib.sha256).hexdigest()
    return signature == f"sha256={expected}"


async def test_crossing_alerts_once_everywhere_and_a_restock_rearms(
    inventory: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, receiver: SignedReceiver
) -> None:
    sku = await _sku(inventory, 10, threshold=5)
    await _take(inventory, sku, 4)  # 6 left: above the threshold
    assert await _outbox(engine, sku) == []
    await _take(inventory, sku, 1)  # 5 left: crossed
    await _take(inventory, sku, 2)  # 3 left: still below, no second alert
    (row,) = await _settled(engine, sku)
    stream = await _stream(redis, sku, LOW)
    assert len(stream) == 1
    assert (stream[0]["available"], stream[0]["threshold"], stream[0]["replenish"], stream[0]["v"]) == (5, 5, 5, 1)
    assert stream[0]["id"] == f"inventory:{row.id}"
    assert row.stream_id is not None and row.attempts == 0 and row.delivered_to == [receiver.url]
    (hook,) = [(b, s, e) for b, s, e in receiver.accepted if e.get("sku") == sku and e["type"] == LOW]
    assert _signed(hook[0], hook[1]), hook[1]
    assert hook[2]["id"] == stream[0]["id"]
    (reminder,) = await _reminders(inventory, sku)
    assert (reminder["suggested_quantity"], reminder["resolved_at"], reminder["available"]) == (5, None, 3)
    assert hook[2]["reminder_id"] == reminder["id"]

    restocked = await _restock(inventory, sku, 10)  # 13 available: above again
    assert restocked["alert_armed"] is True
    assert await _reminders(inventory, sku) == []
    (resolved,) = await _reminders(inventory, sku, include_resolved=True)
    assert resolved["resolved_by"] == "ops-alice" and resolved["resolved_at"] is not None
    await _take(inventory, sku, 8)  # 5 left: the second crossing
    await _take(inventory, sku, 1)
    rows = await _settled(engine, sku)
    assert len(rows) == 2
    assert [e["available"] for e in await _stream(redis, sku, LOW)] == [5, 5]
    assert len(receiver.events(sku, LOW)) == 2
    assert len({e["id"] for e in receiver.events(sku, LOW)}) == 2
    (second,) = await _reminders(inventory, sku)
    assert second["id"] != reminder["id"]


async def test_failing_receiver_gets_the_alert_once_after_retries_and_the_stream_once(
    inventory: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, receiver: SignedReceiver
) -> None:
    sku = await _sku(inventory, 10, threshold=2)
    receiver.fail[(sku, LOW)] = 2
    await _take(inventory, sku, 8)
    (row,) = await _settled(engine, sku)
    assert row.delivered_at is not None and row.failed_at is None
    assert row.attempts == 2 and row.last_error is not None and "HTTP 503" in row.last_error
    assert len([c for c in receiver.calls_for(sku) if c["type"] == LOW]) == 3
    assert len(receiver.events(sku, LOW)) == 1
    assert len(await _stream(redis, sku, LOW)) == 1  # webhook retries did not append again


async def test_rejected_or_never_accepted_alerts_are_given_up(
    inventory: httpx.AsyncClient, engine: AsyncEngine, receiver: SignedReceiver
) -> None:
    rejected, unreachable = await _sku(inventory, 10, threshold=2), await _sku(inventory, 10, threshold=2)
    receiver.reject.add(rejected)
    receiver.down_for.add(unreachable)
    await _take(inventory, rejected, 9)
    await _take(inventory, unreachable, 9)
    (gone,) = await _settled(engine, rejected)
    assert (gone.attempts, gone.delivered_at, gone.streamed_at is not None) == (1, None, True)
    assert gone.failed_at is not None and "HTTP 400" in (gone.last_error or "")
    (tired,) = await _settled(engine, unreachable)
    assert (tired.attempts, tired.delivered_at) == (4, None) and tired.failed_at is not None
    await asyncio.sleep(0.5)
    assert len([c for c in receiver.calls_for(rejected) if c["type"] == LOW]) == 1
    assert len([c for c in receiver.calls_for(unreachable) if c["type"] == LOW]) == 4
    metrics = (await inventory.get("/metrics")).text
    assert "inventory_alerts_failed_total" in metrics


async def test_alert_committed_while_redis_is_down_waits_in_the_outbox_for_the_relay(
    redis: Redis, receiver: SignedReceiver
) -> None:
    await drop_database(db_name_for("inventory_outage"))
    await asyncio.to_thread(upgrade, "inventory", OUTAGE_DB_URL)
    db = create_async_engine(OUTAGE_DB_URL)
    try:
        # A replica whose Redis is down takes the SKU below its threshold: the change commits.
        cut_off = _settings(
            receiver,
            database_url=OUTAGE_DB_URL,
            redis_url=BROKEN_REDIS_URL,
            replica_id="inv-cut-off",
        )
        async with running(cut_off) as broken:
            sku = await _sku(broken, 10, threshold=5)
            assert (await _take(broken, sku, 6))["available"] == 4
            await asyncio.sleep(0.5)  # its relay ran a few times meanwhile
            (row,) = await _outbox(db, sku)
            assert (row.streamed_at, row.stream_id) == (None, None)  # the webhook does not wait for Redis
            assert await _stream(redis, sku, LOW) == []
        # A replica that reaches Redis relays what the first one committed: once, on the stream and the webhook.
        async with running(_settings(receiver, database_url=OUTAGE_DB_URL, replica_id="inv-healthy")):
            (row,) = await _settled(db, sku)
            assert row.delivered_at is not None
            (event,) = await _stream(redis, sku, LOW)
            assert (event["available"], event["id"]) == (4, f"inventory:{row.id}")
            (hook,) = receiver.events(sku, LOW)
            assert hook["id"] == event["id"]
    finally:
        await db.dispose()


async def test_unresolved_reminder_repeats_until_a_restock(
    inventory: httpx.AsyncClient, redis: Redis, engine: AsyncEngine, receiver: SignedReceiver
) -> None:
    sku = await _sku(inventory, 20, threshold=5)
    await _take(inventory, sku, 17)  # 3 left

    async def repeated() -> bool:
        return len(receiver.events(sku, REMINDER)) >= 1

    await wait_for(repeated, timeout=5)
    (reminder,) = await _reminders(inventory, sku)
    assert reminder["reminders_sent"] >= 1
    assert datetime.fromisoformat(reminder["last_reminded_at"]) > datetime.fromisoformat(reminder["created_at"])
    hook = receiver.events(sku, REMINDER)[0]
    assert (hook["suggested_quantity"], hook["available"], hook["reminder_id"]) == (7, 3, reminder["id"])
    assert len(await _stream(redis, sku, REMINDER)) >= 1
    assert len(receiver.events(sku, LOW)) == 1  # a reminder is not a new alert

    await _restock(inventory, sku, 10)
    assert await _reminders(inventory, sku) == []
    await _settled(engine, sku, REMINDER)
    sent = len(receiver.events(sku, REMINDER))
    await asyncio.sleep(1.5)  # longer than the reminder interval
    assert len(receiver.events(sku, REMINDER)) == sent
    assert "inventory_replenishment_reminders_open" in (await inventory.get("/metrics")).text


async def test_periodic_reconciliation_rewrites_a_lost_or_garbled_mirror(
    inventory: httpx.AsyncClient, redis: Redis, engine: AsyncEngine
) -> None:
    sku = await _sku(inventory, 40, threshold=None)
    await _take(inventory, sku, 5)
    key = stock_key(sku)

    async def mirrored() -> bool:
        return bool(await redis.hget(key, "available") == "35")

    await wait_for(mirrored)
    await redis.delete(key)  # Redis lost it
    await wait_for(mirrored, timeout=5)
    await redis.hset(key, "available", "garbage")
    await wait_for(mirrored, timeout=5)
    await redis.hset(key, mapping={"available": "999", "seq": "0"})
    await wait_for(mirrored, timeout=5)
    async with engine.connect() as conn:
        audited = await conn.scalars(
            select(AuditEntry.actor).where(
                AuditEntry.action == "repair_mirror", AuditEntry.actor == "system:reconciler"
            )
        )
        assert audited.first() is not None
    report = (await inventory.get("/admin/reconciliation", headers=admin_headers())).json()
    assert report["ok"]
    assert not [line for line in report["mirror_drift"] if line.startswith(f"{sku}:")]
    assert "inventory_reconciliation_mirror_drift" in (await inventory.get("/metrics")).text


async def test_replenishment_list_needs_the_admin_role(inventory: httpx.AsyncClient) -> None:
    anonymous = await inventory.get("/admin/replenishment")
    customer = await inventory.get("/admin/replenishment", headers=customer_headers("nosy"))
    assert (anonymous.status_code, customer.status_code) == (401, 403)
    assert customer.json()["code"] == "FORBIDDEN"
    bad = await inventory.get("/admin/replenishment?limit=0", headers=admin_headers())
    assert bad.status_code == 422 and bad.json()["code"] == "VALIDATION_ERROR"


def test_default_signing_key_is_refused_outside_dev_when_webhooks_are_set() -> None:
    prod = {"env": "production", "jwt_secret": "a-real-secret-" + "x" * 40}
    with pytest.raises(ValidationError, match="INVENTORY_WEBHOOK_SIGNING_KEY"):
        InventorySettings(**prod, alert_webhooks="https://ops.example/hook")
    InventorySettings(**prod, alert_webhooks="https://ops.example/hook", webhook_signing_key="k" * 32)
    InventorySettings(**prod)  # no webhooks, nothing to sign

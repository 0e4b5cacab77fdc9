"""Payment reminders: two real order processes remind each unpaid order once, a set time before it expires,
on the order events stream and as a signed webhook; paid and cancelled orders are never reminded."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from services.common.contracts import EventType, validate_entry
from services.common.contracts.catalog import ORDER_EVENTS
from services.common.webhooks import DEV_SIGNING_KEY
from services.order.config import OrderSettings
from services.order.service import OrderService
from tests.conftest import (
    PaySims,
    WebhookReceiver,
    admin_headers,
    customer_headers,
    order_processes,
    wait_for,
)
from tests.order.conftest import in_process_settings, unpaid_order

DB_BASE = "orders_reminders"
EVENTS = "test:reminders:order-events"
DEADLINE_SECONDS = 600
REMIND_SECONDS = 300  # a new order is not due; the test moves deadlines into the window once it is ready


@pytest.fixture(scope="module")
def replicas(paysim: PaySims, webhook: WebhookReceiver) -> Iterator[list[str]]:
    """Two order processes with reminders on and the test's webhook receiver as the reminder webhook."""
    env = {
        "ORDER_PURCHASE_STREAM_REGISTRY": "test:reminders:no-streams",
        "ORDER_EVENTS_STREAM": EVENTS,
        "ORDER_EVENTS_STREAM_GROUPS": "",
        "ORDER_PAYSIM_PRIMARY_URL": paysim.primary,
        "ORDER_PAYSIM_BACKUP_URL": paysim.backup,
        "ORDER_PAYMENT_DEADLINE_SECONDS": str(DEADLINE_SECONDS),
        "ORDER_PAYMENT_REMINDER_SECONDS": str(REMIND_SECONDS),
        "ORDER_REMINDER_INTERVAL_SECONDS": "0.2",
        "ORDER_REMINDER_WEBHOOKS": webhook.url,
        "ORDER_DB_POOL_SIZE": "4",
    }
    with order_processes(DB_BASE, {**env, "REPLICA_ID": "remind-1"}, {**env, "REPLICA_ID": "remind-2"}) as urls:
        yield urls


@pytest.fixture(scope="module")
def order_settings(replicas: list[str], paysim: PaySims) -> OrderSettings:
    """The in-process service creates the orders (as purchase events would) in the replicas' database."""
    return in_process_settings(
        DB_BASE,
        paysim,
        registry="test:reminders:no-streams",
        events_stream=EVENTS,
        payment_deadline_seconds=DEADLINE_SECONDS,
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def _reminder_events(redis: Redis, order_id: str) -> list[dict[str, Any]]:
    """The reminder events of one order on the events stream, each checked against its contract."""
    found = []
    entries: list[tuple[str, dict[str, str]]] = await redis.xrange(EVENTS)  # type: ignore[assignment]
    for _id, fields in entries:
        if fields.get("type") != EventType.ORDER_PAYMENT_REMINDER:
            continue
        data = orjson.loads(fields["data"])
        if data["order_id"] == order_id:
            validate_entry(ORDER_EVENTS, fields)
            found.append(data)
    return found


async def test_each_unpaid_order_is_reminded_once_before_it_expires_and_paid_or_closed_ones_never(
    replicas: list[str], service: OrderService, webhook: WebhookReceiver, http: httpx.AsyncClient, redis: Redis
) -> None:
    sale_id = int(uuid.uuid4().int % 10**9) + 10**9
    users = {name: f"{name}-{uuid.uuid4().hex[:6]}" for name in ("forgetful", "prompt", "quitter")}
    ids = {
        name: (await unpaid_order(service, sale_id=sale_id, user=user, unit_price=2_500))[0]
        for name, user in users.items()
    }
    paid = await http.post(f"{replicas[0]}/orders/{ids['prompt']}/pay", headers=customer_headers(users["prompt"], "p"))
    assert paid.status_code == 200, paid.text
    cancel = await http.post(
        f"{replicas[1]}/orders/{ids['quitter']}/cancel", headers=customer_headers(users["quitter"], "c")
    )
    assert cancel.status_code == 200, cancel.text

    # Five minutes before their deadline now: the paid and the cancelled order are past being reminded.
    async with service.sessions.begin() as session:
        await session.execute(
            text("UPDATE orders SET deadline_at = now() + interval '100 seconds' WHERE id = ANY(:ids)"),
            {"ids": list(ids.values())},
        )

    def hooks_for(order_id: str) -> list[dict[str, object]]:
        return [h for h in webhook.received if h.get("order_id") == order_id]

    await wait_for(lambda: _true(len(hooks_for(ids["forgetful"])) == 1), timeout=15)
    await asyncio.sleep(1.5)  # several more reminder ticks of both replicas
    hook = hooks_for(ids["forgetful"])
    assert len(hook) == 1
    body, signature = next((b, sig) for b, sig in webhook.raw if orjson.loads(b).get("order_id") == ids["forgetful"])
    assert signature == "sha256=" + hmac.new(DEV_SIGNING_KEY.encode(), body, hashlib.sha256).hexdigest()
    assert hook[0]["type"] == "order.payment_reminder"
    assert hook[0]["user_id"] == users["forgetful"] and hook[0]["total"] == 2_500
    for name in ("prompt", "quitter"):
        assert hooks_for(ids[name]) == []
        assert await _reminder_events(redis, ids[name]) == []
    streamed = await _reminder_events(redis, ids["forgetful"])
    assert len(streamed) == 1 and streamed[0]["sale_id"] == sale_id

    # Paying after the reminder counts as a reminded order paid; the order is reminded no further.
    late = await http.post(
        f"{replicas[0]}/orders/{ids['forgetful']}/pay", headers=customer_headers(users["forgetful"], "late")
    )
    assert late.status_code == 200, late.text
    metrics = (await http.get(f"{replicas[0]}/metrics")).text
    after = re.search(rf'order_sale_orders_paid_after_reminder_total{{sale_id="{sale_id}"}} (\S+)', metrics)
    assert after is not None and float(after.group(1)) == 1
    both = metrics + (await http.get(f"{replicas[1]}/metrics")).text
    assert re.search(r'order_payment_reminders_total\{step="written"\} [1-9]', both)
    order = (await http.get(f"{replicas[1]}/admin/orders/{ids['forgetful']}", headers=admin_headers())).json()
    assert order["state"] == "paid"


async def _true(value: bool) -> bool:
    return value

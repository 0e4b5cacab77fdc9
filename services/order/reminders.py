"""Payment reminders: once per order, a configured time before an unpaid order expires.

The reminder job marks due orders reminded and writes their `order.payment_reminder` events to the outbox in
one statement, so an order is reminded at most once whatever the number of replicas (SKIP LOCKED) and only
while it is unpaid; the outbox relay streams the event to `{orders}:events` with every other order event. When
reminder webhooks are configured, the `order-reminders` group posts each reminder, signed like every webhook
of the platform, unless the order was paid or closed since; a failed post stays pending and is retried.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.contracts import ConsumerGroup, EventType, decode_event
from services.common.metrics import CounterTable
from services.common.resources import RedisClient
from services.common.streams import StreamConsumer
from services.common.webhooks import sign
from services.order.config import OrderSettings
from services.order.models import OrderState
from services.order.states import utcnow

log = logging.getLogger("order.reminders")

REMINDERS = CounterTable(
    "order_payment_reminders_total", "Payment reminders by step: written (event) or posted (webhooks)", ["step"]
)

# Mark the due orders reminded and write their events in one statement: the mark and the event commit together.
REMIND_DUE = text(
    "WITH due AS (SELECT id FROM orders WHERE state = 'pending_payment' AND reminded_at IS NULL "
    "AND deadline_at > :now AND deadline_at <= :horizon ORDER BY deadline_at LIMIT :batch FOR UPDATE SKIP LOCKED), "
    "marked AS (UPDATE orders o SET reminded_at = :now FROM due WHERE o.id = due.id "
    "RETURNING o.id, o.user_id, o.reservation_id, o.sale_id, o.total, o.currency, o.deadline_at) "
    f"INSERT INTO outbox (event_type, payload) SELECT '{EventType.ORDER_PAYMENT_REMINDER}', jsonb_build_object("
    "'order_id', id, 'user_id', user_id, 'reservation_id', reservation_id, 'sale_id', sale_id, 'total', total, "
    "'currency', currency, 'deadline_at', to_char(deadline_at AT TIME ZONE 'UTC', "
    """'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), 'reminded_at', CAST(:now_text AS text)) FROM marked"""
)
ORDER_STATE = text("SELECT state FROM orders WHERE id = :order_id")


class PaymentReminders:
    """Writes each due order's reminder once, and posts reminders to the configured webhooks."""

    def __init__(self, *, settings: OrderSettings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.client = httpx.AsyncClient(timeout=5.0)

    async def remind_due(self, batch: int = 500) -> int:
        """Mark the unpaid orders whose deadline is within the reminder time and write their events."""
        if self.settings.payment_reminder_seconds <= 0:
            return 0
        now = utcnow()
        horizon = now + timedelta(seconds=self.settings.payment_reminder_seconds)
        params = {"now": now, "now_text": now.isoformat(), "horizon": horizon, "batch": batch}
        async with self.sessions.begin() as session:
            written = int(getattr(await session.execute(REMIND_DUE, params), "rowcount", 0) or 0)
        if written:
            REMINDERS.inc(("written",), written)
        return written

    async def on_order_payment_reminder(self, event: dict[str, Any]) -> None:
        """Post one reminder to every webhook, unless its order was paid or closed since it was written."""
        async with self.sessions() as session:
            state = await session.scalar(ORDER_STATE, {"order_id": event["order_id"]})
        if state != OrderState.PENDING_PAYMENT.value:
            return
        body = orjson.dumps(event)
        headers = sign(body, self.settings.webhook_signing_key)
        for url in self.settings.reminder_webhook_urls:
            resp = await self.client.post(url, content=body, headers=headers)
            resp.raise_for_status()  # the entry stays pending and the group retries it
        REMINDERS.inc(("posted",))

    def webhook_consumer(self, redis: RedisClient, consumer_name: str) -> StreamConsumer:
        """The `order-reminders` group of the order events stream (run only while webhooks are configured)."""

        async def handle(entry_id: str, fields: dict[str, Any]) -> None:
            event = decode_event(fields)
            if event.get("type") == EventType.ORDER_PAYMENT_REMINDER:
                await self.on_order_payment_reminder(event)

        return StreamConsumer(
            redis=redis,
            stream=self.settings.events_stream,
            group=ConsumerGroup.ORDER_REMINDERS,
            consumer=consumer_name,
            handler=handle,
            claim_idle_ms=10_000,
        )

    async def aclose(self) -> None:
        """Close the webhook client."""
        await self.client.aclose()

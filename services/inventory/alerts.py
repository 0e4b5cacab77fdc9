"""Low-stock alerts and replenishment reminders.

An alert is written to the `alert_outbox` table in the same transaction as the stock change that raised
it, so a commit is never followed by a lost alert. Every replica relays the outbox (`SELECT ... FOR UPDATE
SKIP LOCKED`, so replicas share rows without doubling them): first to the Redis `alerts` stream, then to
each webhook. The two are tracked apart, so a webhook retry never appends to the stream again. Delivery is
at least once (a crash between sending and committing sends again): receivers dedupe on the event `id`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.contracts import EVENT_VERSIONS, EventType
from services.common.webhooks import sign
from services.inventory.config import InventorySettings
from services.inventory.models import AlertEvent, AlertOutbox, ReplenishmentReminder, Sku
from services.inventory.store import StockMirror

log = logging.getLogger("inventory.alerts")

ALERTS_RELAYED = Counter(
    "inventory_alerts_relayed_total", "Alerts handed on, by event and channel", ["event", "channel"]
)
WEBHOOK_DELIVERIES = Counter(
    "inventory_alert_webhook_deliveries_total", "Alert webhook delivery attempts by outcome", ["outcome"]
)
ALERTS_FAILED = Counter("inventory_alerts_failed_total", "Alerts whose webhook delivery was given up", ["event"])
OUTBOX_PENDING = Gauge("inventory_alert_outbox_pending", "Alerts not yet streamed, or not yet delivered to webhooks")
OPEN_REMINDERS = Gauge("inventory_replenishment_reminders_open", "SKUs below their threshold awaiting a restock")
REMINDERS_SENT = Counter("inventory_replenishment_reminders_sent_total", "Replenishment reminders repeated")

SOURCE = "inventory"


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def threshold_units(row: Sku) -> int | None:
    """The low-stock threshold in units: absolute, or percent of on-hand stock (rounded down)."""
    if row.low_stock_threshold is None:
        return None
    if row.threshold_kind == "percent":
        return row.on_hand * row.low_stock_threshold // 100
    return row.low_stock_threshold


def replenish_units(threshold: int, available: int) -> int:
    """Units that bring available back to twice the threshold (at least one unit above it)."""
    return max(2 * threshold, threshold + 1) - available


def event_body(row: AlertOutbox) -> dict[str, Any]:
    """The versioned event an outbox row stands for; the same bytes on every retry."""
    event_type = EventType(row.event_type)
    return {
        **row.payload,
        "id": f"{SOURCE}:{row.id}",
        "type": event_type,
        "v": EVENT_VERSIONS[event_type],
        "source": SOURCE,
    }


# ---------------------------------------------------------------- writes inside a stock change's transaction


async def enqueue(session: AsyncSession, *, event: AlertEvent, sku: str, payload: dict[str, Any]) -> AlertOutbox:
    """Add an alert to the outbox in the caller's transaction; it leaves only if that commits."""
    row = AlertOutbox(
        event_type=event.value, sku=sku, payload=payload, delivered_to=[], attempts=0, next_attempt_at=utcnow()
    )
    session.add(row)
    await session.flush()
    return row


async def open_reminder(session: AsyncSession, *, sku: str, suggested: int, at: datetime) -> ReplenishmentReminder:
    """Open the SKU's replenishment reminder (or refresh the one still open)."""
    reminder = await session.scalar(
        select(ReplenishmentReminder)
        .where(ReplenishmentReminder.sku == sku, ReplenishmentReminder.resolved_at.is_(None))
        .with_for_update()
    )
    if reminder is not None:
        reminder.suggested_quantity = suggested
        reminder.last_reminded_at = at
        return reminder
    reminder = ReplenishmentReminder(
        sku=sku, suggested_quantity=suggested, created_at=at, last_reminded_at=at, reminders_sent=0
    )
    session.add(reminder)
    await session.flush()
    return reminder


async def resolve_reminders(session: AsyncSession, *, sku: str, actor: str, at: datetime) -> list[int]:
    """Close the SKU's open reminder (a restock or a new threshold ended the shortage); returns closed ids."""
    closed = await session.scalars(
        update(ReplenishmentReminder)
        .where(ReplenishmentReminder.sku == sku, ReplenishmentReminder.resolved_at.is_(None))
        .values(resolved_at=at, resolved_by=actor)
        .returning(ReplenishmentReminder.id)
    )
    return list(closed)


# ---------------------------------------------------------------- the relay and the reminder job


class AlertRelay:
    """Moves outbox rows to the alerts stream and the webhooks, and repeats open reminders."""

    def __init__(
        self, *, settings: InventorySettings, sessions: async_sessionmaker[AsyncSession], mirror: StockMirror
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.mirror = mirror
        self.client = httpx.AsyncClient(timeout=settings.webhook_timeout_seconds)

    async def aclose(self) -> None:
        """Close the webhook client."""
        await self.client.aclose()

    async def relay_once(self, *, ids: Sequence[int] | None = None) -> int:
        """One pass over due outbox rows; returns how many moved on (streamed, or a webhook attempt made).

        With `ids` (right after the commit that wrote them) only those rows are streamed and webhooks
        are left to the periodic pass, so a request never waits on somebody else's HTTP server.
        """
        now = utcnow()
        o = AlertOutbox
        due = or_(
            o.streamed_at.is_(None),
            and_(o.delivered_at.is_(None), o.failed_at.is_(None), o.next_attempt_at <= now),
        )
        query = select(o).where(due).order_by(o.id).limit(self.settings.alert_relay_batch)
        if ids is not None:
            query = query.where(o.id.in_(list(ids)))
        progressed = 0
        async with self.sessions.begin() as session:
            rows = list(await session.scalars(query.with_for_update(skip_locked=True)))
            if rows:
                progressed = await self._stream(rows, now)
                if ids is None:
                    progressed = max(progressed, await self._deliver(rows, now))
            if ids is None:
                pending = await session.scalar(
                    select(func.count())
                    .select_from(o)
                    .where(or_(o.streamed_at.is_(None), o.delivered_at.is_(None)))
                    .where(o.failed_at.is_(None))
                )
                OUTBOX_PENDING.set(pending or 0)
        # Not len(rows): with Redis down the same rows come back every pass, and "a full batch, go again
        # at once" would spin.
        return progressed

    async def _stream(self, rows: list[AlertOutbox], now: datetime) -> int:
        streamed = 0
        for row in rows:
            if row.streamed_at is not None:
                continue
            try:
                row.stream_id = await self.mirror.publish_event(EventType(row.event_type), event_body(row))
            except RedisError as exc:
                # Redis is ours and comes back: the rest wait in the outbox, with no attempt counted.
                log.warning("alerts stream unavailable (%s); alerts wait in the outbox", type(exc).__name__)
                break
            row.streamed_at = now
            streamed += 1
            ALERTS_RELAYED.labels(row.event_type, "stream").inc()
        return streamed

    async def _deliver(self, rows: list[AlertOutbox], now: datetime) -> int:
        due = [r for r in rows if r.delivered_at is None and r.failed_at is None and r.next_attempt_at <= now]
        urls = self.settings.webhook_urls
        jobs = [(row, url) for row in due for url in urls if url not in row.delivered_to]
        outcomes = await asyncio.gather(*(self._post(url, event_body(row)) for row, url in jobs))
        errors: dict[int, list[tuple[str, bool, str]]] = {}
        for (row, url), outcome in zip(jobs, outcomes, strict=True):
            if outcome is None:
                row.delivered_to = [*row.delivered_to, url]  # a new list, so the JSONB change is saved
                WEBHOOK_DELIVERIES.labels("delivered").inc()
            else:
                errors.setdefault(row.id, []).append((url, *outcome))
        for row in due:
            failures = errors.get(row.id)
            if not failures:
                row.delivered_at = now
                if urls:
                    ALERTS_RELAYED.labels(row.event_type, "webhook").inc()
                continue
            row.attempts += 1
            row.last_error = "; ".join(f"{url}: {reason}" for url, _permanent, reason in failures)[:2000]
            rejected = any(permanent for _url, permanent, _reason in failures)
            if rejected or row.attempts >= self.settings.alert_max_attempts:
                row.failed_at = now
                WEBHOOK_DELIVERIES.labels("failed").inc()
                ALERTS_FAILED.labels(row.event_type).inc()
                log.error(
                    "alert %s (%s for %s) not delivered to webhooks after %d attempts%s: %s",
                    row.id,
                    row.event_type,
                    row.sku,
                    row.attempts,
                    " (rejected by the receiver)" if rejected else "",
                    row.last_error,
                )
            else:
                delay = min(
                    self.settings.alert_retry_max_seconds,
                    self.settings.alert_retry_base_seconds * 2 ** (row.attempts - 1),
                )
                row.next_attempt_at = now + timedelta(seconds=delay)
                WEBHOOK_DELIVERIES.labels("retry").inc()
        return len(due)

    async def _post(self, url: str, body: dict[str, Any]) -> tuple[bool, str] | None:
        """POST one signed event; None when accepted, else (permanent?, reason)."""
        content = orjson.dumps(body)
        try:
            resp = await self.client.post(
                url, content=content, headers=sign(content, self.settings.webhook_signing_key)
            )
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        if resp.status_code < 300:
            return None
        # The receiver refuses this event; only a timeout or throttling (408, 429) is worth another try.
        permanent = 400 <= resp.status_code < 500 and resp.status_code not in (408, 429)
        return permanent, f"HTTP {resp.status_code}"

    async def remind_due(self) -> int:
        """Repeat every open reminder not heard of for `reminder_interval_seconds`; returns how many were sent."""
        now = utcnow()
        r = ReplenishmentReminder
        sent = 0
        async with self.sessions.begin() as session:
            due = list(
                await session.scalars(
                    select(r)
                    .where(
                        r.resolved_at.is_(None),
                        r.last_reminded_at <= now - timedelta(seconds=self.settings.reminder_interval_seconds),
                    )
                    .order_by(r.last_reminded_at)
                    .limit(self.settings.alert_relay_batch)
                    .with_for_update(skip_locked=True)
                )
            )
            skus = {s.sku: s for s in await session.scalars(select(Sku).where(Sku.sku.in_([d.sku for d in due])))}
            for reminder in due:
                reminder.last_reminded_at = now
                row = skus.get(reminder.sku)
                threshold = threshold_units(row) if row is not None else None
                if row is None or threshold is None or row.available > threshold:
                    # Units came back (released holds, returned allocations) without a restock: the alert
                    # stays disarmed, so the reminder stays open, but there is nothing to ask for right now.
                    continue
                reminder.suggested_quantity = replenish_units(threshold, row.available)
                reminder.reminders_sent += 1
                await enqueue(
                    session,
                    event=AlertEvent.REPLENISH_REMINDER,
                    sku=reminder.sku,
                    payload={
                        "sku": reminder.sku,
                        "reminder_id": reminder.id,
                        "available": row.available,
                        "on_hand": row.on_hand,
                        "threshold": threshold,
                        "suggested_quantity": reminder.suggested_quantity,
                        "open_since": reminder.created_at.isoformat(),
                        "reminders_sent": reminder.reminders_sent,
                        "at": now.isoformat(),
                    },
                )
                sent += 1
            open_count = await session.scalar(select(func.count()).select_from(r).where(r.resolved_at.is_(None)))
        OPEN_REMINDERS.set(open_count or 0)
        REMINDERS_SENT.inc(sent)
        return sent

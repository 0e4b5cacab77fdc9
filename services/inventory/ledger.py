"""The one way stock moves: a change is one transaction that locks the SKU row, moves its counters, appends a
ledger row and, when it crosses the low-stock threshold, writes the alert to the outbox; Redis (mirror,
alerts stream) learns of it only after the commit.

Every flow (SKUs, allocations, holds) changes stock through `StockLedger.change()`, so none of them can
forget the ledger row, the threshold or the mirror.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.idempotency import IdempotencyStore
from services.common.resources import RedisClient
from services.inventory import errors
from services.inventory.alerts import (
    AlertRelay,
    enqueue,
    open_reminder,
    replenish_units,
    resolve_reminders,
    threshold_units,
)
from services.inventory.config import InventorySettings
from services.inventory.models import AlertEvent, AuditEntry, LedgerEntry, LedgerKind, Sku
from services.inventory.store import StockMirror

log = logging.getLogger("inventory.ledger")

LOW_STOCK_ALERTS = Counter("inventory_low_stock_alerts_total", "Low-stock alerts raised (one per crossing)")


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def counters_of(row: Sku) -> dict[str, int]:
    """A SKU's counters as the audit log records them before and after a change."""
    return {
        "on_hand": row.on_hand,
        "available": row.available,
        "allocated": row.allocated,
        "held": row.held,
        "sold": row.sold,
    }


def above_threshold(row: Sku) -> bool:
    """Whether the SKU is not short: no threshold, or `available` above it."""
    threshold = threshold_units(row)
    return threshold is None or row.available > threshold


def require_available(row: Sku, quantity: int) -> None:
    """Refuse a change that takes more units than are available (INSUFFICIENT_STOCK, nothing changed)."""
    if row.available < quantity:
        raise errors.InsufficientStock(
            f"Only {row.available} of {row.sku} available; {quantity} asked", extra={"available": row.available}
        )


@dataclass
class AfterCommit:
    """What Redis must learn once the transaction committed: mirrored counters and outbox ids of raised alerts."""

    mirrors: dict[str, tuple[int, int]] = field(default_factory=dict)
    alerts: list[int] = field(default_factory=list)


@dataclass
class StockChange:
    """One open stock transaction: its session and what Redis learns after it commits."""

    session: AsyncSession
    effects: AfterCommit = field(default_factory=AfterCommit)

    async def lock(self, sku: str) -> Sku:
        """The SKU row, locked until the change commits (SKU_NOT_FOUND when there is none)."""
        row = await self.session.scalar(select(Sku).where(Sku.sku == sku).with_for_update())
        if row is None:
            raise errors.SkuNotFound(f"No SKU {sku}")
        return row

    async def record(
        self,
        row: Sku,
        *,
        kind: LedgerKind,
        quantity: int,
        actor: str,
        ref: str | None = None,
        reason: str | None = None,
        rearm: bool = False,
    ) -> None:
        """Append the ledger row for a change already made to `row`, and watch the low-stock threshold.

        A crossing writes its alert to the outbox and opens the replenishment reminder; a restock that lifts
        `available` above the threshold resolves the reminder. All in this transaction.
        """
        entry = LedgerEntry(
            sku=row.sku,
            kind=kind.value,
            quantity=quantity,
            ref=ref,
            actor=actor,
            reason=reason,
            available_after=row.available,
        )
        self.session.add(entry)
        alert = _watch_threshold(row, rearm=rearm)
        await self.session.flush()
        self.effects.mirrors[row.sku] = (row.available, entry.id)
        if alert is not None:
            reminder = await open_reminder(self.session, sku=row.sku, suggested=alert["replenish"], at=utcnow())
            alert["reminder_id"] = reminder.id
            outbox = await enqueue(self.session, event=AlertEvent.LOW_STOCK, sku=row.sku, payload=alert)
            self.effects.alerts.append(outbox.id)
        elif rearm and above_threshold(row):
            await resolve_reminders(self.session, sku=row.sku, actor=actor, at=utcnow())

    def audit(self, **fields: Any) -> None:
        """Add the audit row of this change; it commits (or rolls back) with the change."""
        self.session.add(AuditEntry(**fields))


def _watch_threshold(row: Sku, *, rearm: bool) -> dict[str, Any] | None:
    """Disarm and describe an alert when `available` is at/below the threshold and the alert is armed.

    Only a restock (or an upward adjustment) that lifts `available` above the threshold re-arms it,
    so units trickling back from holds do not make one shortage ring twice.
    """
    threshold = threshold_units(row)
    if threshold is None:
        return None
    if row.available > threshold:
        if rearm:
            row.alert_armed = True
        return None
    if not row.alert_armed:
        return None
    row.alert_armed = False
    return {
        "sku": row.sku,
        "available": row.available,
        "on_hand": row.on_hand,
        "threshold": threshold,
        "threshold_kind": row.threshold_kind,
        "threshold_value": row.low_stock_threshold,
        # Enough to bring available back to twice the threshold (at least one unit above it).
        "replenish": replenish_units(threshold, row.available),
        "at": utcnow().isoformat(),
    }


class StockLedger:
    """The core every flow shares: the engine, the Redis mirror, the alert relay, admin Idempotency-Key records."""

    def __init__(
        self, *, settings: InventorySettings, redis: RedisClient, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sessions = sessions
        self.mirror = StockMirror(redis, settings.alerts_stream)
        self.relay = AlertRelay(settings=settings, sessions=sessions, mirror=self.mirror)
        self.admin_keys = IdempotencyStore(redis, "inventory-admin")

    @asynccontextmanager
    async def change(self) -> AsyncIterator[StockChange]:
        """One stock transaction; Redis hears of it only once it committed (a failed one tells Redis nothing)."""
        async with self.sessions.begin() as session:
            change = StockChange(session)
            yield change
        await self.publish(change.effects)

    async def publish(self, effects: AfterCommit) -> None:
        """Tell Redis what committed. A Redis failure here is logged, never reported as a failed change."""
        for sku, (available, seq) in effects.mirrors.items():
            try:
                await self.mirror.write(sku=sku, available=available, seq=seq)
            except RedisError as exc:
                log.warning("mirror write for %s failed (%s); reads fall back later", sku, type(exc).__name__)
        if effects.alerts:
            LOW_STOCK_ALERTS.inc(len(effects.alerts))
            # The alerts are safe in the outbox; streaming them now only saves the relay's wait.
            try:
                await self.relay.relay_once(ids=effects.alerts)
            except (RedisError, SQLAlchemyError, OSError) as exc:
                log.warning("alerts %s left to the relay (%s)", effects.alerts, type(exc).__name__)

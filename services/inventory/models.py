"""The inventory service's PostgreSQL tables: SKUs, the append-only ledger, allocations, holds, audit,
the alert outbox and replenishment reminders."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, DateTime, Index, Integer, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.contracts import EventType


class Base(DeclarativeBase):
    pass


class LedgerKind(enum.StrEnum):
    RESTOCK = "restock"
    ALLOCATE = "allocate"
    RETURN = "return"
    SELL = "sell"
    HOLD = "hold"
    RELEASE = "release"
    CONFIRM = "confirm"
    ADJUST = "adjust"


class HoldState(enum.StrEnum):
    HELD = "held"
    CONFIRMED = "confirmed"
    RELEASED = "released"
    EXPIRED = "expired"


class Sku(Base):
    """One SKU's warehouse counters; the database refuses any row where they do not add up."""

    __tablename__ = "skus"
    __table_args__ = (
        CheckConstraint("on_hand >= 0", name="ck_skus_on_hand"),
        CheckConstraint("available >= 0", name="ck_skus_available"),
        CheckConstraint("allocated >= 0", name="ck_skus_allocated"),
        CheckConstraint("held >= 0", name="ck_skus_held"),
        CheckConstraint("sold >= 0", name="ck_skus_sold"),
        CheckConstraint("on_hand = available + allocated + held + sold", name="ck_skus_balance"),
        CheckConstraint("threshold_kind IN ('absolute', 'percent')", name="ck_skus_threshold_kind"),
        CheckConstraint("low_stock_threshold IS NULL OR low_stock_threshold >= 0", name="ck_skus_threshold"),
    )

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    on_hand: Mapped[int] = mapped_column(BigInteger, default=0)
    available: Mapped[int] = mapped_column(BigInteger, default=0)
    allocated: Mapped[int] = mapped_column(BigInteger, default=0)
    held: Mapped[int] = mapped_column(BigInteger, default=0)
    sold: Mapped[int] = mapped_column(BigInteger, default=0)
    low_stock_threshold: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    threshold_kind: Mapped[str] = mapped_column(String(8), default="absolute")
    alert_armed: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LedgerEntry(Base):
    """One change of one SKU's stock; rows are only ever inserted."""

    __tablename__ = "ledger"
    __table_args__ = (
        Index("ix_ledger_sku_id", "sku", "id"),
        CheckConstraint(
            "kind IN ('restock', 'allocate', 'return', 'sell', 'hold', 'release', 'confirm', 'adjust')",
            name="ck_ledger_kind",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sku: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    # Signed only for `adjust`; every other kind moves a positive number of units.
    quantity: Mapped[int] = mapped_column(BigInteger)
    ref: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    available_after: Mapped[int] = mapped_column(BigInteger)


class Allocation(Base):
    """Warehouse stock given to one flash sale: allocated, then returned unsold or sold (running totals)."""

    __tablename__ = "allocations"
    __table_args__ = (CheckConstraint("returned + sold <= allocated", name="ck_allocations_balance"),)

    sale_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    allocated: Mapped[int] = mapped_column(BigInteger, default=0)
    returned: Mapped[int] = mapped_column(BigInteger, default=0)
    sold: Mapped[int] = mapped_column(BigInteger, default=0)


class Hold(Base):
    """Units set aside for one regular checkout until it confirms, releases, or runs out of time."""

    __tablename__ = "holds"
    __table_args__ = (
        Index("ix_holds_due", "expires_at", postgresql_where="state = 'held'"),
        CheckConstraint("quantity > 0", name="ck_holds_quantity"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(12), default=HoldState.HELD.value)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    sku: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


class AlertEvent(enum.StrEnum):
    """The alert types inventory raises: the wire values of their stream events."""

    LOW_STOCK = EventType.STOCK_LOW.value
    REPLENISH_REMINDER = EventType.STOCK_REPLENISH_REMINDER.value


class AlertOutbox(Base):
    """An alert written in the same transaction as the stock change that raised it, relayed afterwards.

    The stream and the webhooks are tracked apart, so retrying a webhook never appends to the stream again.
    """

    __tablename__ = "alert_outbox"
    __table_args__ = (
        # What the relay still has to do: stream it, or deliver it to webhooks (not yet given up).
        Index(
            "ix_alert_outbox_pending",
            "id",
            postgresql_where=text("streamed_at IS NULL OR (delivered_at IS NULL AND failed_at IS NULL)"),
        ),
        Index("ix_alert_outbox_sku", "sku", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_type: Mapped[str] = mapped_column(String(40))
    sku: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    streamed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    stream_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Webhook URLs that acknowledged the alert: a retry goes only to the others.
    delivered_to: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ReplenishmentReminder(Base):
    """A SKU that crossed its low-stock threshold and waits for a restock; repeated until resolved."""

    __tablename__ = "replenishment_reminders"
    __table_args__ = (
        # At most one open reminder per SKU.
        Index("ux_reminders_open_sku", "sku", unique=True, postgresql_where=text("resolved_at IS NULL")),
        Index("ix_reminders_open_due", "last_reminded_at", postgresql_where=text("resolved_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    sku: Mapped[str] = mapped_column(String(64))
    suggested_quantity: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # When ops last heard about it: the alert itself, then each repeat.
    last_reminded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Repeats sent after the first alert.
    reminders_sent: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(128), nullable=True)

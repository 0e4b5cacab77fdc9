"""The inventory service's PostgreSQL tables: SKUs, the append-only ledger, allocations, holds, audit."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, DateTime, Index, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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

"""Flashsale's PostgreSQL tables: sales and the admin audit log."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class SaleState(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    LIVE = "live"
    PAUSED = "paused"
    ENDED = "ended"


class LowStockPolicy(enum.StrEnum):
    ALERT = "alert"
    ALERT_AND_PAUSE = "alert_and_pause"


class Sale(Base):
    __tablename__ = "sales"
    __table_args__ = (
        CheckConstraint("price >= 0 AND original_price >= 0", name="ck_sales_money_non_negative"),
        CheckConstraint("quantity >= 0", name="ck_sales_quantity"),
        CheckConstraint("per_user_limit >= 1", name="ck_sales_limit"),
        CheckConstraint("ends_at > starts_at", name="ck_sales_window"),
        CheckConstraint("low_stock_threshold_pct BETWEEN 0 AND 100", name="ck_sales_threshold"),
        Index("ix_sales_state_starts", "state", "starts_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    sku: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    price: Mapped[int] = mapped_column(BigInteger)
    original_price: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    quantity: Mapped[int] = mapped_column(Integer)
    per_user_limit: Mapped[int] = mapped_column(Integer)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    low_stock_threshold_pct: Mapped[int] = mapped_column(Integer, default=10)
    low_stock_policy: Mapped[str] = mapped_column(String(20), default=LowStockPolicy.ALERT.value)
    state: Mapped[str] = mapped_column(String(16), default=SaleState.DRAFT.value)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    went_live_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Units given back to the warehouse after the sale ended, and when nothing was left to settle.
    returned_units: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_sale_at", "sale_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    sale_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


class Briefing(Base):
    """One periodic briefing of a live sale (once per sale and period, whichever replica writes it first)."""

    __tablename__ = "briefings"
    __table_args__ = (Index("ux_briefings_sale_period", "sale_id", "period_start", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    sale_id: Mapped[int] = mapped_column(BigInteger)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)

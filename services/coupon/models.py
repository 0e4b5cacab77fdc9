"""The coupon service's PostgreSQL tables: templates, wallets (coupons), paid orders, audit."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class CouponState(enum.StrEnum):
    AVAILABLE = "available"
    LOCKED = "locked"
    USED = "used"
    EXPIRED = "expired"


class Template(Base):
    __tablename__ = "coupon_templates"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    amount_off: Mapped[int] = mapped_column(BigInteger, default=0)
    percent_bp: Mapped[int] = mapped_column(Integer, default=0)
    cap: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    min_spend: Mapped[int] = mapped_column(BigInteger, default=0)
    tiers: Mapped[list[dict[str, int]]] = mapped_column(JSONB, default=list)
    scope: Mapped[str] = mapped_column(String(8), default="all")
    scope_skus: Mapped[list[str]] = mapped_column(JSONB, default=list)
    scope_sales: Mapped[list[int]] = mapped_column(JSONB, default=list)
    stacking_group: Mapped[str | None] = mapped_column(String(64), nullable=True)
    exclusive: Mapped[bool] = mapped_column(Boolean, default=False)
    valid_from: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    valid_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_quantity: Mapped[int] = mapped_column(Integer)
    per_user_limit: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(12), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str] = mapped_column(String(128))


class Coupon(Base):
    __tablename__ = "coupons"
    __table_args__ = (
        Index("ix_coupons_user_state", "user_id", "state"),
        Index("ix_coupons_order", "order_id"),
        Index("ix_coupons_template_state", "template_id", "state"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    template_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(12), default=CouponState.AVAILABLE.value)
    source: Mapped[str] = mapped_column(String(16), default="claim")
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    valid_from: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    order_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    discount: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    locked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PaidOrder(Base):
    """Paid orders seen on the order events stream: who is still a new user (first paid order)."""

    __tablename__ = "paid_orders"

    order_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    template_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)

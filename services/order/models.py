"""The order service's PostgreSQL tables: orders, lines, transitions, payment attempts, outbox, audit log,
idempotency records."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class OrderState(enum.StrEnum):
    PENDING_PAYMENT = "pending_payment"
    PAID = "paid"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    REFUND_PENDING = "refund_pending"


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_user_created", "user_id", "created_at"),
        Index("ix_orders_sale_state", "sale_id", "state"),
        # The sweeper's scan: unpaid orders by deadline.
        Index(
            "ix_orders_pending_deadline",
            "deadline_at",
            postgresql_where="state = 'pending_payment'",
        ),
        Index("ix_orders_pricing_pending", "created_at", postgresql_where="pricing = 'coupons_pending'"),
        # The claim check's scan: orders whose payment is (or was left) in flight.
        Index(
            "ix_orders_payment_claimed",
            "payment_claimed_at",
            postgresql_where="payment_claimed_at IS NOT NULL",
        ),
        # The refund job's scan: charges that landed on a closed order.
        Index("ix_orders_refund_pending", "closed_at", postgresql_where="state = 'refund_pending'"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    reservation_id: Mapped[str] = mapped_column(String(64), unique=True)
    sale_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(20))
    currency: Mapped[str] = mapped_column(String(3))
    subtotal: Mapped[int] = mapped_column(BigInteger)
    discount: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[int] = mapped_column(BigInteger)
    reserved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    deadline_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # When the buyer was reminded to pay (once per order; see services/order/reminders.py).
    reminded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # How to pay offline, while both payment providers are down and ops opened the offline channel.
    payment_instructions: Mapped[str | None] = mapped_column(Text, nullable=True)
    payment_provider: Mapped[str | None] = mapped_column(String(32), nullable=True)
    payment_ref: Mapped[str | None] = mapped_column(String(128), nullable=True)
    close_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Coupons the buyer named, and how they priced the order: final, or coupons_pending while the
    # coupon service has not answered yet (such an order cannot be paid until it is priced).
    coupon_ids: Mapped[list[str]] = mapped_column(JSONB, default=list)
    coupons: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    member: Mapped[bool] = mapped_column(Boolean, default=False)
    pricing: Mapped[str] = mapped_column(String(16), default="final")
    # Set while a payment is in flight (taken before a provider is called): a cancel or the expiry sweeper
    # leaves a claimed order alone. `payment_claim` is the claimant's token, so only it releases the claim.
    payment_claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    payment_claim: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The W3C traceparent of the order's creation span (or of its purchase, while the order side does not
    # trace): the charge span's parent, so the pay of an order joins its purchase's trace.
    traceparent: Mapped[str | None] = mapped_column(String(55), nullable=True)

    lines: Mapped[list[OrderLine]] = relationship(order_by="OrderLine.id", lazy="raise")


class OrderLine(Base):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(String(32), ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    sku: Mapped[str] = mapped_column(String(64))
    sale_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    unit_price: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(BigInteger)


class OrderTransition(Base):
    """One state change of an order: from, to, when, who and why (the order's history)."""

    __tablename__ = "order_transitions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(String(32), ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)


class PaymentAttempt(Base):
    __tablename__ = "payment_attempts"
    __table_args__ = (
        # One charge, one success record: a replayed answer of the same charge is not recorded again.
        Index(
            "ux_payment_attempts_one_success_per_charge",
            "provider",
            "provider_ref",
            unique=True,
            postgresql_where="outcome = 'succeeded'",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(String(32), ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    provider: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(32))
    latency_ms: Mapped[int] = mapped_column(Integer)
    provider_ref: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)


class OutboxEvent(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unpublished", "id", postgresql_where="published_at IS NULL"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class OfflineChannel(Base):
    """An offline payment channel of a sale, opened by ops while every payment provider is down."""

    __tablename__ = "offline_channels"
    __table_args__ = (
        # At most one open channel per sale.
        Index("ux_offline_channels_open", "sale_id", unique=True, postgresql_where="closed_at IS NULL"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    sale_id: Mapped[int] = mapped_column(BigInteger, index=True)
    instructions: Mapped[str] = mapped_column(Text)
    deadline_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # unpaid orders payable until then
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    opened_by: Mapped[str] = mapped_column(String(128))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    order_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


class IdempotencyRecord(Base):
    """One Idempotency-Key of pay or cancel: in flight while `status` is NULL, then the first answer."""

    __tablename__ = "idempotency_records"
    __table_args__ = (Index("ix_idempotency_records_expires_at", "expires_at"),)

    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(32))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    body: Mapped[str | None] = mapped_column(Text, nullable=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

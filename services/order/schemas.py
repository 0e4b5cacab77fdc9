"""Response models of the order API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class OrderLineOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sku: str
    sale_id: int | None
    unit_price: int
    quantity: int
    amount: int


class OrderOut(BaseModel):
    """An order with its lines and price breakdown (integer minor units)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    reservation_id: str
    sale_id: int
    user_id: str
    state: str
    currency: str
    subtotal: int
    discount: int
    total: int
    lines: list[OrderLineOut]
    created_at: datetime
    deadline_at: datetime
    paid_at: datetime | None
    closed_at: datetime | None
    close_reason: str | None
    payment_provider: str | None
    pricing: str = "final"
    coupons: dict[str, Any] | None = None
    # Set while every payment provider was down and ops opened the sale's offline channel: how to pay.
    payment_instructions: str | None = None


class PaymentAttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    provider: str
    outcome: str
    latency_ms: int
    provider_ref: str | None
    error: str | None


class OrderTransitionOut(BaseModel):
    """One step of an order's history: from which state to which, when, by whom and why."""

    model_config = ConfigDict(from_attributes=True)

    from_state: str
    to_state: str
    at: datetime
    actor: str
    reason: str | None


class AdminOrderOut(OrderOut):
    """An order as ops see it, with every payment attempt and its history of transitions."""

    payment_ref: str | None
    payment_claimed_at: datetime | None
    attempts: list[PaymentAttemptOut]
    history: list[OrderTransitionOut]


class OrderStats(BaseModel):
    """Numbers ops watch during a sale."""

    sale_id: int | None
    orders: int
    by_state: dict[str, int]
    paid: int
    gmv: int
    payment_attempts: int
    payment_success_rate: float | None
    median_seconds_to_pay: float | None


class SaleReservation(BaseModel):
    """One reservation of a sale as the order record sees it, for flashsale's reconciliation."""

    reservation_id: str
    user_id: str
    quantity: int
    # reserved: the order waits for payment; sold: paid (also paid then refunded by ops);
    # released: cancelled, expired or failed, so its units went back to the sale.
    stock: Literal["reserved", "sold", "released"]


class SaleReservations(BaseModel):
    """Every reservation of a sale that has an order, and the units by stock state."""

    sale_id: int
    reserved_units: int
    sold_units: int
    released_units: int
    reservations: list[SaleReservation]


class OfflineChannelRequest(BaseModel):
    """Open a sale's offline payment channel: what buyers are told, and how long unpaid orders stay payable."""

    model_config = ConfigDict(extra="forbid")

    instructions: str = Field(min_length=1, max_length=2000)
    extend_minutes: int = Field(ge=1, le=7 * 24 * 60, strict=True)


class OfflineChannelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    sale_id: int
    instructions: str
    deadline_at: datetime
    opened_at: datetime
    opened_by: str
    closed_at: datetime | None
    closed_by: str | None
    orders_extended: int = 0


class OfflinePaymentRequest(BaseModel):
    """An offline payment ops received for an order: the bank transfer's or the receipt's reference."""

    model_config = ConfigDict(extra="forbid")

    reference: str = Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e][\x20-\x7e]*$")

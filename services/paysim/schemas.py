"""Request and response models of paysim's API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

MAX_MONEY = 10**12
MAX_LATENCY_MS = 60_000

Money = Annotated[StrictInt, Field(ge=1, le=MAX_MONEY, description="Integer minor units (cents)")]
OrderId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PaymentRequest(_Strict):
    """A charge. Amounts ending in 402 (amount % 1000 == 402) are declined, for drills."""

    order_id: OrderId
    amount: Money
    currency: str = Field(pattern=r"^[A-Z]{3}$", examples=["USD"])


class PaymentOut(BaseModel):
    """A payment as the provider records it."""

    payment_id: str
    status: Literal["succeeded", "refunded"]
    order_id: str
    amount: int
    currency: str
    provider: str
    created_at: datetime
    refunded_at: datetime | None = None


class FaultsPatch(_Strict):
    """Fault settings to change; omitted (or null) fields keep their value."""

    error_rate: Annotated[StrictFloat, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    latency_ms: Annotated[StrictInt, Field(ge=0, le=MAX_LATENCY_MS)] | None = None
    processing_ms: Annotated[StrictInt, Field(ge=0, le=MAX_LATENCY_MS)] | None = None
    down: StrictBool | None = None


class FaultsOut(BaseModel):
    """The faults injected into the /payments endpoints right now."""

    provider: str
    error_rate: float
    latency_ms: int
    processing_ms: int = 0
    down: bool
    updated_at: datetime | None
    updated_by: str | None


class AuditEntry(BaseModel):
    """One audited admin action."""

    at: datetime
    actor: str
    action: str
    before: dict[str, Any]
    after: dict[str, Any]
    request_id: str | None

"""Request and response models of the inventory API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from services.common.sku import SKU_PATTERN as SKU_PATTERN
from services.common.sku import SkuCode

MAX_QUANTITY = 1_000_000_000
Quantity = Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY, description="Whole units, at least 1")]
Reason = Annotated[str, Field(min_length=1, max_length=500)]
ThresholdKind = Literal["absolute", "percent"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SkuCreate(_Strict):
    """A new SKU with its first stock (recorded as a restock in the ledger)."""

    sku: SkuCode
    name: str = Field(min_length=1, max_length=200)
    initial_stock: Annotated[StrictInt, Field(ge=0, le=MAX_QUANTITY)] = 0
    low_stock_threshold: Annotated[StrictInt, Field(ge=0, le=MAX_QUANTITY)] | None = None
    threshold_kind: ThresholdKind = "absolute"


class RestockRequest(_Strict):
    quantity: Quantity
    reason: Reason


class AdjustRequest(_Strict):
    """A stock-take correction: positive adds units, negative removes available ones."""

    delta: Annotated[StrictInt, Field(ge=-MAX_QUANTITY, le=MAX_QUANTITY)]
    reason: Reason

    @field_validator("delta")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("delta must not be 0")
        return value


class ThresholdRequest(_Strict):
    """`value` units (absolute) or percent of on-hand stock (percent); null turns the alert off."""

    value: Annotated[StrictInt, Field(ge=0, le=MAX_QUANTITY)] | None
    kind: ThresholdKind = "absolute"


class AllocationRequest(_Strict):
    sale_id: Annotated[StrictInt, Field(ge=1, le=2**62)]
    sku: SkuCode
    quantity: Quantity


class AllocationChange(_Strict):
    quantity: Quantity


class AllocationTarget(_Strict):
    """What a sale says its allocation is now: running totals, so a repeated call changes nothing."""

    allocated: Annotated[StrictInt, Field(ge=0, le=10**9)]
    sold: Annotated[StrictInt | None, Field(ge=0, le=10**9)] = None
    returned: Annotated[StrictInt | None, Field(ge=0, le=10**9)] = None


class HoldRequest(_Strict):
    sku: SkuCode
    quantity: Quantity
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=3600)]


class SkuOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sku: str
    name: str
    on_hand: int
    available: int
    allocated: int
    held: int
    sold: int
    low_stock_threshold: int | None
    threshold_kind: str
    alert_armed: bool


class LedgerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    sku: str
    kind: str
    quantity: int
    ref: str | None
    actor: str
    reason: str | None
    available_after: int


class SkuDetail(SkuOut):
    ledger: list[LedgerOut]


class AllocationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sale_id: int
    sku: str
    allocated: int
    returned: int
    sold: int
    outstanding: int


class HoldOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    hold_id: str
    sku: str
    quantity: int
    state: str
    expires_at: datetime


class Availability(BaseModel):
    sku: str
    available: int


class ReminderOut(BaseModel):
    """A SKU that crossed its low-stock threshold; open until a restock lifts it above again."""

    id: int
    sku: str
    suggested_quantity: int = Field(description="Units that bring available back to twice the threshold")
    available: int = Field(description="Available now")
    created_at: datetime
    last_reminded_at: datetime = Field(description="When ops last heard: the alert, then each repeat")
    reminders_sent: int = Field(description="Repeats sent after the alert")
    resolved_at: datetime | None
    resolved_by: str | None


class Counters(BaseModel):
    on_hand: int
    available: int
    allocated: int
    held: int
    sold: int

    @property
    def balanced(self) -> bool:
        """on_hand = available + allocated + held + sold."""
        return self.on_hand == self.available + self.allocated + self.held + self.sold


class SkuReconciliation(BaseModel):
    sku: str
    counters: Counters
    from_ledger: Counters
    counters_balanced: bool
    ledger_balanced: bool
    last_ledger_available: int | None
    mirror_available: int | None
    drift: list[str]


class Reconciliation(BaseModel):
    """`ok` is about the truth (counters and ledger in PostgreSQL); `mirror_drift` lists SKUs whose Redis
    copy of `available` is missing or differs, which `POST /admin/reconciliation/repair` rewrites."""

    ok: bool
    skus: list[SkuReconciliation]
    drift: list[str]
    mirror_drift: list[str] = []

"""Request and response models of flashsale's API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, model_validator

from services.common.sku import SkuCode
from services.flashsale.models import LowStockPolicy, SaleState

MAX_MONEY = 10**12
MAX_QUANTITY = 10_000_000
MAX_UNITS_PER_PURCHASE = 100

Money = Annotated[StrictInt, Field(ge=0, le=MAX_MONEY, description="Integer minor units (cents)")]
Units = Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SaleCreate(_Strict):
    """A new sale, created in `draft`."""

    sku: SkuCode
    title: str = Field(min_length=1, max_length=200)
    price: Money
    original_price: Money
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    quantity: Units
    per_user_limit: Annotated[StrictInt, Field(ge=1, le=1000)] = 1
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    low_stock_threshold_pct: Annotated[StrictInt, Field(ge=0, le=100)] = 10
    low_stock_policy: LowStockPolicy = LowStockPolicy.ALERT

    @model_validator(mode="after")
    def _check(self) -> SaleCreate:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if self.price > self.original_price:
            raise ValueError("price must not exceed original_price")
        return self


class SaleUpdate(_Strict):
    """Changes to a sale that has not gone live yet; omitted fields stay as they are."""

    title: str | None = Field(None, min_length=1, max_length=200)
    price: Money | None = None
    original_price: Money | None = None
    quantity: Units | None = None
    per_user_limit: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    low_stock_threshold_pct: Annotated[StrictInt, Field(ge=0, le=100)] | None = None
    low_stock_policy: LowStockPolicy | None = None


class AddStock(_Strict):
    """Units to add to a sale's stock."""

    units: Units


class SaleOut(BaseModel):
    """A sale as ops see it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    sku: str
    title: str
    price: int
    original_price: int
    currency: str
    quantity: int
    per_user_limit: int
    starts_at: datetime
    ends_at: datetime
    low_stock_threshold_pct: int
    low_stock_policy: LowStockPolicy
    state: SaleState
    created_at: datetime
    updated_at: datetime
    went_live_at: datetime | None
    ended_at: datetime | None
    returned_units: int = 0
    settled_at: datetime | None = None


class SaleStats(BaseModel):
    """Live numbers of one sale."""

    sale_id: int
    state: str
    quantity: int
    remaining: int
    reserved: int
    sold: int
    released: int
    returned: int = 0
    attempts: dict[str, int]
    sold_out_at: datetime | None
    first_sold_out_at: datetime | None


class BriefingOut(BaseModel):
    """One periodic briefing of a live sale (its body as sent to the alert webhooks)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    sale_id: int
    period_start: datetime
    at: datetime
    body: dict[str, Any]


class AuditOut(BaseModel):
    """One audited admin action."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: str
    sale_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None


class PurchaseRequest(_Strict):
    """How many units to buy, and optionally which coupons to price the order with."""

    quantity: Annotated[StrictInt, Field(ge=1, le=MAX_UNITS_PER_PURCHASE)]
    coupon_ids: list[Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]] = Field(
        default_factory=list, max_length=5
    )


class PurchaseAccepted(BaseModel):
    """A reservation was made; the order appears at `status_url`."""

    reservation_id: str
    sale_id: int
    quantity: int
    status: str = "reserved"
    status_url: str


class SaleView(BaseModel):
    """A sale as a storefront shows it, with a countdown and live remaining stock."""

    id: int
    sku: str
    title: str
    price: int
    original_price: int
    currency: str
    per_user_limit: int
    state: str
    starts_at: datetime
    ends_at: datetime
    server_time: datetime
    seconds_to_start: float
    seconds_to_end: float
    quantity: int
    remaining: int
    sold_out: bool


class BuyerAllowance(BaseModel):
    """The caller's own numbers in one sale, so a storefront can say "you may buy 1 more"."""

    sale_id: int
    state: str
    bought: int = Field(description="Units the caller holds or bought in this sale")
    limit: int = Field(description="The sale's per-user limit")
    may_buy: int = Field(description="Units the caller may still buy: within the limit and the stock; 0 once ended")
    remaining: int


class SaleAlert(BaseModel):
    """One alert a sale raised (stock.low, sale.sold_out, reconciliation.drift), oldest first."""

    id: str
    type: str
    at: datetime | None
    data: dict[str, Any]


class RedisCounters(BaseModel):
    """A sale's counters as Redis holds them."""

    state: str
    quantity: int
    remaining: int
    reserved: int
    sold: int
    returned: int


class OrderUnits(BaseModel):
    """A sale's units by what the order record says about them."""

    reserved: int
    sold: int
    released: int


class AllocationView(BaseModel):
    """The sale's allocation as the warehouse (inventory service) records it."""

    allocated: int
    sold: int
    returned: int


class RebuildView(BaseModel):
    """What repair mode wrote to Redis."""

    remaining_before: int | None
    remaining: int
    reserved: int
    sold: int
    in_flight: int
    excess: int = Field(description="Units promised beyond the sale's quantity; left for a human, never hidden")


class SaleReconciliation(BaseModel):
    """quantity = remaining + reserved_unpaid + paid + returned, checked for one sale."""

    sale_id: int
    sku: str
    state: str
    checked_at: datetime
    quantity: int
    remaining: int
    reserved_unpaid: int = Field(description="Orders awaiting payment plus reservations whose order is in flight")
    paid: int
    returned: int = Field(description="Units given back to the warehouse after the sale ended")
    in_flight: int = Field(description="Units Redis reserved whose order is not created yet")
    drift: int = Field(description="remaining + reserved_unpaid + paid + returned - quantity; > 0 could oversell")
    balanced: bool
    redis: RedisCounters | None
    orders: OrderUnits | None
    allocation: AllocationView | None
    problems: list[str]
    repaired: RebuildView | None = None

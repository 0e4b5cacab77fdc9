"""Request and response models of the coupon API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

MAX_MONEY = 10**12
Money = Annotated[StrictInt, Field(ge=0, le=MAX_MONEY, description="Integer minor units")]
Kind = Literal["fixed_off", "percent_off", "tiered", "no_threshold", "member_only", "new_user", "compensation"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TierIn(_Strict):
    spend: Annotated[StrictInt, Field(gt=0, le=MAX_MONEY)]
    off: Annotated[StrictInt, Field(gt=0, le=MAX_MONEY)]


class TemplateCreate(_Strict):
    """A coupon template. Percentages are basis points (500 = 5%)."""

    name: str = Field(min_length=1, max_length=200)
    kind: Kind
    amount_off: Money = 0
    percent_bp: Annotated[StrictInt, Field(ge=0, le=10_000)] = 0
    cap: Money | None = None
    min_spend: Money = 0
    tiers: list[TierIn] = Field(default_factory=list, max_length=20)
    scope: Literal["all", "skus", "sales"] = "all"
    scope_skus: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=500)
    scope_sales: list[Annotated[StrictInt, Field(ge=1)]] = Field(default_factory=list, max_length=500)
    stacking_group: str | None = Field(None, min_length=1, max_length=64)
    exclusive: StrictBool = False
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    valid_days: Annotated[StrictInt, Field(ge=1, le=3650)] | None = None
    total_quantity: Annotated[StrictInt, Field(ge=1, le=100_000_000)]
    per_user_limit: Annotated[StrictInt, Field(ge=1, le=1000)] = 1

    @model_validator(mode="after")
    def _window(self) -> TemplateCreate:
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        if self.valid_days is not None and self.valid_until is not None:
            raise ValueError("give either a fixed window (valid_until) or valid_days from claim, not both")
        return self


class TemplateOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    amount_off: int
    percent_bp: int
    cap: int | None
    min_spend: int
    tiers: list[dict[str, int]]
    scope: str
    scope_skus: list[str]
    scope_sales: list[int]
    stacking_group: str | None
    exclusive: bool
    valid_from: datetime | None
    valid_until: datetime | None
    valid_days: int | None
    total_quantity: int
    per_user_limit: int
    state: str
    created_at: datetime


class ClaimedCoupon(BaseModel):
    coupon_id: str
    template_id: int
    state: str = "available"


class WalletCoupon(BaseModel):
    """A coupon in a wallet, with what it needs to apply."""

    coupon_id: str
    template: TemplateOut
    state: str
    claimed_at: datetime
    valid_from: datetime | None
    valid_until: datetime | None
    order_id: str | None


class LineIn(_Strict):
    sku: str = Field(min_length=1, max_length=64)
    sale_id: Annotated[StrictInt, Field(ge=1)] | None = None
    unit_price: Money
    quantity: Annotated[StrictInt, Field(ge=1, le=10_000)]


class QuoteRequest(_Strict):
    """Order lines and the coupons to apply; `coupon_ids: null` picks the best combination."""

    lines: list[LineIn] = Field(min_length=1, max_length=100)
    coupon_ids: list[Annotated[str, Field(min_length=1, max_length=32)]] | None = Field(None, max_length=20)


class LockRequest(QuoteRequest):
    """Price an order and lock the coupons it uses (called by the order service)."""

    order_id: str = Field(min_length=1, max_length=32)
    user_id: str = Field(min_length=1, max_length=128)
    is_member: StrictBool = False


class DiscountOut(BaseModel):
    coupon_id: str
    template_id: int
    kind: str
    amount: int
    reason: str


class RejectionOut(BaseModel):
    coupon_id: str
    code: str
    detail: str


class QuoteOut(BaseModel):
    subtotal: int
    discounts: list[DiscountOut]
    discount: int
    total: int
    rejections: list[RejectionOut]


# Which buyers of a sale a batch reaches (services/coupon/orders.py asks the order service for them).
SaleBuyers = Literal["system_failure", "paid"]


class CompensationRequest(_Strict):
    """Issue one coupon of a template to each listed user, or to the buyers of a sale (give exactly one of
    `user_ids` and `sale_id`): with `buyers` "system_failure" (the default) those whose order a system failure
    cancelled, with "paid" those who paid for it (repurchase coupons after a sale)."""

    template_id: Annotated[StrictInt, Field(ge=1, le=2**62)]
    user_ids: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, min_length=1, max_length=10_000
    )
    sale_id: Annotated[StrictInt, Field(ge=1, le=2**62)] | None = None  # the order service's bound
    buyers: SaleBuyers = "system_failure"
    reason: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _one_target(self) -> CompensationRequest:
        if (self.user_ids is None) == (self.sale_id is None):
            raise ValueError("give exactly one of user_ids and sale_id")
        if self.user_ids is not None and "buyers" in self.model_fields_set:
            raise ValueError("buyers chooses among a sale's buyers: give it with sale_id, not with user_ids")
        return self


class TemplateStats(BaseModel):
    template_id: int
    total_quantity: int
    claimed: int
    in_wallets: int
    locked: int
    used: int
    discount_given: int


class RefundRequest(_Strict):
    """A partial refund of a paid order that used coupons."""

    order_id: str = Field(min_length=1, max_length=32)
    user_id: str = Field(min_length=1, max_length=128)
    lines: list[LineIn] = Field(min_length=1, max_length=100)
    refunded: list[LineIn] = Field(min_length=1, max_length=100)


class RefundOut(BaseModel):
    order_id: str
    paid: int
    kept_total: int
    refund: int

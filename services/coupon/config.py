"""Coupon service settings, read from COUPON_* (and the shared) environment variables."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.common.config import BaseServiceSettings
from services.common.contracts import ORDER_EVENTS_STREAM


class CouponSettings(BaseServiceSettings):
    """Everything the coupon service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="COUPON_", extra="ignore", populate_by_name=True)

    service_name: str = "coupon"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/coupons"
    order_events_stream: str = ORDER_EVENTS_STREAM
    claim_idempotency_ttl_seconds: int = 24 * 3600
    # How often each replica checks whether Redis lost data (counters gone, or a restart that may have lost
    # its last second) and, if so, rebuilds the counters from the wallets and settles locked coupons.
    restore_interval_seconds: float = 5.0
    # Coupons locked longer than this (well past the order service's payment deadline) are settled from the
    # order record even without a Redis restart, in case their order's event never arrived; checked this often.
    stale_lock_after_seconds: float = 1800.0
    stale_lock_sweep_seconds: float = 300.0
    # The order service, asked which buyers of a sale had orders cancelled by a system failure.
    order_url: str = "http://127.0.0.1:8104"
    order_timeout_seconds: float = 10.0
    # Bearer token with the admin role for service-to-service calls; minted from JWT_SECRET when empty.
    service_token: str = ""

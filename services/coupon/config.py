"""Coupon service settings, read from COUPON_* (and the shared) environment variables."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.common.config import BaseServiceSettings


class CouponSettings(BaseServiceSettings):
    """Everything the coupon service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="COUPON_", extra="ignore", populate_by_name=True)

    service_name: str = "coupon"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/coupons"
    claim_stream: str = "coupons:claims"
    order_events_stream: str = "orders:events"
    claim_idempotency_ttl_seconds: int = 24 * 3600
    # How often templates whose Redis counters are gone (Redis lost data) are rebuilt from the wallets.
    restore_interval_seconds: float = 5.0
    # The order service, asked which buyers of a sale had orders cancelled by a system failure.
    order_url: str = "http://127.0.0.1:8104"
    # Bearer token with the admin role for service-to-service calls; minted from JWT_SECRET when empty.
    service_token: str = ""

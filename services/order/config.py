"""Order service settings, read from ORDER_* (and the shared) environment variables."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.config import BaseServiceSettings
from services.common.contracts import ORDER_EVENTS_STREAM, PURCHASE_STREAM_REGISTRY
from services.common.webhooks import DEV_SIGNING_KEY, refuse_default_key, url_list


class OrderSettings(BaseServiceSettings):
    """Everything the order service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="ORDER_", extra="ignore", populate_by_name=True)

    service_name: str = "order"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/orders"
    db_pool_size: int = 20
    # Checking each pooled connection before use costs three round trips per checkout, more than the pay
    # call's own statements; a connection PostgreSQL dropped fails one statement instead (and is replaced).
    db_pre_ping: bool = False
    payment_deadline_seconds: int = 15 * 60
    paysim_primary_url: str = "http://127.0.0.1:8105"
    paysim_backup_url: str = "http://127.0.0.1:8115"
    payment_timeout_seconds: float = 2.0
    breaker_failure_threshold: int = 5
    breaker_reset_seconds: float = 10.0
    # Where flashsale lists the purchase streams of its sales, and where order events go.
    purchase_stream_registry: str = PURCHASE_STREAM_REGISTRY
    events_stream: str = ORDER_EVENTS_STREAM
    # How often entries every consumer group acknowledged are trimmed from the events stream, and the groups
    # that must exist (and have read an entry) before it may go.
    stream_trim_seconds: float = 10.0
    events_stream_groups: str = "flashsale,coupon"
    consumer_batch: int = 500
    consumer_claim_idle_ms: int = 5_000
    stream_discovery_seconds: float = 1.0
    sweeper_interval_seconds: float = 1.0
    # Expired Idempotency-Key records of pay and cancel are deleted this often.
    idempotency_sweep_seconds: float = 60.0
    relay_interval_seconds: float = 0.05
    # How often the stream backlog and outbox gauges (/metrics) are read: one Redis pipeline and one query a tick.
    gauge_interval_seconds: float = 5.0
    relay_batch: int = 1000
    # When Redis restarted or lost its data, events published within this many seconds before the last publish
    # are sent again: AOF everysec loses up to ~1 s (2 s when an fsync is slow), a pass is 0.05 s, and a pass
    # that published to the new Redis before its restart was seen is inside it too; consumers are idempotent.
    relay_republish_seconds: float = 10.0
    max_long_poll_seconds: float = 20.0
    # Orders that name coupons are priced (and their coupons locked) by the coupon service.
    coupon_url: str = "http://127.0.0.1:8103"
    coupon_timeout_seconds: float = 2.0
    pricing_retry_interval_seconds: float = 1.0
    # A provider that timed out may still have charged: after this grace period, paid orders whose other
    # provider timed out or failed are checked there, and a duplicate charge is refunded.
    duplicate_check_after_seconds: float = 60.0
    duplicate_check_interval_seconds: float = 10.0
    # A payment claim older than this is taken to be left by a crashed process: the claim check asks the
    # providers what they charged, then marks the order paid or gives the claim back. Well above the longest
    # pay call (two providers x payment_timeout_seconds).
    payment_claim_ttl_seconds: float = 60.0
    claim_check_interval_seconds: float = 5.0
    # Charges that landed on a closed order are refunded by a job; a refund the provider does not confirm is
    # tried again after refund_retry_seconds, doubling per failed try up to 32 times that.
    refund_interval_seconds: float = 2.0
    refund_retry_seconds: float = 5.0
    # A buyer whose order is still unpaid this long before its deadline is reminded once (0: never), by an
    # `order.payment_reminder` event and, when reminder webhooks are set, a signed POST to each of them.
    payment_reminder_seconds: float = Field(300.0, ge=0)
    reminder_interval_seconds: float = 1.0
    reminder_webhooks: str = Field("", description="Comma-separated URLs that receive payment reminders")
    webhook_signing_key: str = DEV_SIGNING_KEY
    # How often open offline payment channels extend new unpaid orders and check whether a provider is back.
    offline_check_seconds: float = 5.0
    # Bearer token with the admin role for service-to-service calls; minted from JWT_SECRET when empty.
    service_token: str = ""

    @property
    def reminder_webhook_urls(self) -> list[str]:
        """Configured payment reminder webhook URLs."""
        return url_list(self.reminder_webhooks)

    @model_validator(mode="after")
    def _refuse_default_webhook_key(self) -> OrderSettings:
        refuse_default_key(self, self.reminder_webhook_urls, self.webhook_signing_key)
        return self

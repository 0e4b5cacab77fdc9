"""Flashsale settings, read from FLASHSALE_* (and the shared) environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.contracts import ALERTS_STREAM, ORDER_EVENTS_STREAM
from services.common.webhooks import WebhookSettings


class FlashSaleSettings(WebhookSettings):
    """Everything flashsale reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="FLASHSALE_", extra="ignore", populate_by_name=True)

    service_name: str = "flashsale"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/flashsale"
    # Per-user purchase attempts per second on one replica (a cheap local guard; the gateway has the global one).
    user_rate_per_second: float = 10.0
    user_rate_burst: int = 20
    idempotency_ttl_seconds: int = 24 * 3600
    # With Redis replicas: answer a purchase only once this many replicas of its master have it (WAIT after each
    # pipelined batch), so the loss of a master loses no acknowledged purchase. 0: answer at once. A wait that
    # times out answers 503 STOCK_UNAVAILABLE (outcome unknown: retry with the same Idempotency-Key).
    purchase_wait_replicas: int = Field(0, ge=0, le=5)
    purchase_wait_timeout_ms: int = Field(200, ge=1, le=10_000)
    sold_out_cache_seconds: float = 2.0
    status_cache_seconds: float = 0.2
    catalog_refresh_seconds: float = 1.0
    scheduler_interval_seconds: float = 0.25
    webhook_max_attempts: int = 6
    # The warehouse: a sale's quantity is an allocation of the SKU's stock in the inventory service
    # (empty: sales are not backed by a warehouse, e.g. a shop without the inventory service).
    inventory_url: str = ""
    # The order record, which reconciliation compares Redis with and rebuilds it from.
    order_url: str = ""
    # Bearer token for calls to inventory/order admin APIs; empty mints one with JWT_SECRET (HS256 only).
    service_token: str = ""
    upstream_timeout_seconds: float = 5.0
    # How often sold and returned units are reported to the inventory service, and ended sales settled.
    allocation_sync_seconds: float = 2.0
    # How often every warm or unsettled sale is reconciled (report, metric, alert on drift).
    reconcile_interval_seconds: float = 60.0
    # How often the live sales' stock gauges (/metrics) are read from Redis: one pipelined read per tick.
    stock_gauge_seconds: float = 5.0
    # A briefing of every live sale each interval (orders, GMV, payment success, stock, sell-out estimate,
    # anomalies), sent to the alert webhooks and kept for the console; checked every briefing_check_seconds.
    briefing_interval_seconds: float = Field(3600.0, ge=1)
    briefing_check_seconds: float = 30.0
    # A warm sale whose Redis data is gone (Redis lost data) is rebuilt from the record automatically;
    # any other drift is only reported.
    auto_rebuild_lost_sales: bool = True
    # Stock the warehouse still counts as allocated to a sale id flashsale has no sale for (its creation died
    # between the allocation and the commit) is given back once it has been seen that way this long.
    orphan_allocation_grace_seconds: float = 300.0
    order_events_stream: str = ORDER_EVENTS_STREAM
    alerts_stream: str = ALERTS_STREAM

"""Inventory service settings, read from INVENTORY_* (and the shared) environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.contracts import ALERTS_STREAM
from services.common.webhooks import WebhookSettings


class InventorySettings(WebhookSettings):
    """Everything the inventory service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="INVENTORY_", extra="ignore", populate_by_name=True)

    service_name: str = "inventory"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/inventory"
    port: int = 8101
    alerts_stream: str = ALERTS_STREAM
    # Shortest and longest hold a checkout may ask for; tests lower the minimum to watch holds expire.
    min_hold_seconds: int = 10
    max_hold_seconds: int = 3600
    # How often every replica looks for holds past their deadline, and how many it returns per pass.
    sweep_interval_seconds: float = 1.0
    sweep_batch: int = 200
    recent_ledger_entries: int = 20
    # Low-stock alerts and replenishment reminders leave through an outbox table; every replica relays it.
    webhook_timeout_seconds: float = 5.0
    # Webhook delivery: attempts per alert before it is marked failed, and the backoff between them
    # (base * 2**attempt, capped). The stream is retried until Redis takes it; it never gives up.
    alert_max_attempts: int = Field(8, ge=1)
    alert_retry_base_seconds: float = 1.0
    alert_retry_max_seconds: float = 300.0
    alert_relay_interval_seconds: float = 1.0
    alert_relay_batch: int = 50
    # An unresolved replenishment reminder is repeated this often; due reminders are looked for every
    # reminder_check_seconds.
    reminder_interval_seconds: float = 4 * 3600
    reminder_check_seconds: float = 30.0
    # The periodic reconciliation (one replica per tick). Drift in PostgreSQL is reported for a human;
    # a drifted Redis mirror is only a copy and is rewritten from PostgreSQL when auto_repair_mirror is on.
    reconcile_interval_seconds: float = 60.0
    auto_repair_mirror: bool = True

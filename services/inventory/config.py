"""Inventory service settings, read from INVENTORY_* (and the shared) environment variables."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.common.config import BaseServiceSettings


class InventorySettings(BaseServiceSettings):
    """Everything the inventory service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="INVENTORY_", extra="ignore", populate_by_name=True)

    service_name: str = "inventory"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/inventory"
    port: int = 8101
    alerts_stream: str = "alerts"
    # Shortest and longest hold a checkout may ask for; tests lower the minimum to watch holds expire.
    min_hold_seconds: int = 10
    max_hold_seconds: int = 3600
    # How often every replica looks for holds past their deadline, and how many it returns per pass.
    sweep_interval_seconds: float = 1.0
    sweep_batch: int = 200
    recent_ledger_entries: int = 20

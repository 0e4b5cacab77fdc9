"""Paysim settings, read from PAYSIM_* (and the shared) environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import BaseServiceSettings


class PaySimSettings(BaseServiceSettings):
    """Everything paysim reads from its environment; one process is one provider (primary, backup, ...)."""

    model_config = SettingsConfigDict(env_prefix="PAYSIM_", extra="ignore", populate_by_name=True)

    service_name: str = "paysim"
    name: str = Field("primary", pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="Provider name in answers")
    # A simulator keeps payments in memory; the oldest are forgotten past this many.
    max_payments: int = Field(200_000, ge=1, le=10_000_000)
    audit_size: int = Field(1_000, ge=1, le=100_000)

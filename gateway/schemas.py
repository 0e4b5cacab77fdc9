"""Request and response models of the gateway's own endpoints."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from services.common.auth import MAX_SUBJECT_LENGTH, ROLE_CUSTOMER


class DevTokenRequest(BaseModel):
    """Who the demo token is for."""

    user_id: str = Field(min_length=1, max_length=MAX_SUBJECT_LENGTH, pattern=r"^[A-Za-z0-9._:@-]+$")
    roles: list[str] = Field(default_factory=lambda: [ROLE_CUSTOMER], max_length=8)
    ttl_seconds: int | None = Field(None, ge=1, le=24 * 3600)


class DevTokenOut(BaseModel):
    """A signed HS256 bearer token."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int
    user_id: str
    roles: list[str]


class UpstreamsOut(BaseModel):
    """Every pool, each replica's health, ejections and breaker state."""

    worker: str = Field(description="The gateway worker that answered")
    pools: list[dict[str, Any]] = Field(description="The pools as the worker that answered sees them")
    workers: list[dict[str, Any]] = Field(description="Every live worker's view: worker, reported_at, pools")
    replicas: list[dict[str, Any]] = Field(
        description="Per replica: workers seeing it, and in how many it is available, unhealthy, ejected, "
        "behind an open breaker"
    )
    workers_error: str | None = Field(None, description="Why other workers' views are missing, if they are")

"""Fault injection for drills: a provider that is down, slow, or failing some share of requests."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from services.paysim.errors import ProviderDown, ProviderError
from services.paysim.schemas import FaultsPatch

PAYMENTS = Counter("paysim_payments_total", "Payment calls answered, by outcome", ["provider", "outcome"])


@dataclass
class FaultState:
    """The faults one paysim process injects into its /payments endpoints."""

    provider: str
    error_rate: float = 0.0
    latency_ms: int = 0
    processing_ms: int = 0
    down: bool = False
    updated_at: datetime | None = None
    updated_by: str | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def as_json(self) -> dict[str, Any]:
        """The current faults."""
        return {
            "provider": self.provider,
            "error_rate": self.error_rate,
            "latency_ms": self.latency_ms,
            "processing_ms": self.processing_ms,
            "down": self.down,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "updated_by": self.updated_by,
        }

    def update(self, patch: FaultsPatch, *, actor: str) -> None:
        """Merge the given fields into the current faults."""
        if patch.error_rate is not None:
            self.error_rate = patch.error_rate
        if patch.latency_ms is not None:
            self.latency_ms = patch.latency_ms
        if patch.processing_ms is not None:
            self.processing_ms = patch.processing_ms
        if patch.down is not None:
            self.down = patch.down
        self.updated_at, self.updated_by = datetime.now(UTC), actor

    def reset(self, *, actor: str) -> None:
        """Back to a healthy provider."""
        self.error_rate, self.latency_ms, self.processing_ms, self.down = 0.0, 0, 0, False
        self.updated_at, self.updated_by = datetime.now(UTC), actor

    async def gate(self) -> None:
        """Refuse the call as a broken provider would: down at once, or a slow random 500 without effect."""
        if self.down:
            PAYMENTS.labels(self.provider, "down").inc()
            raise ProviderDown(f"Provider {self.provider!r} is down (fault injection)")
        if self.error_rate > 0 and self.rng.random() < self.error_rate:
            await self.delay()
            PAYMENTS.labels(self.provider, "error").inc()
            raise ProviderError(f"Provider {self.provider!r} failed the request (fault injection); nothing was done")

    async def process(self) -> None:
        """The injected processing time, spent before a charge is made (a provider that charges late)."""
        if self.processing_ms > 0:
            await asyncio.sleep(self.processing_ms / 1000)

    async def delay(self) -> None:
        """The injected latency, spent before answering."""
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)

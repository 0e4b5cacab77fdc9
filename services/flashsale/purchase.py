"""The purchase hot path, and the end of a reservation: released (units back) or confirmed (units sold).

Every decision is the purchase script's (store.py, lua/purchase.lua); this flow only keeps the cheap
guards in front of it (sold-out flags, the per-user rate limit) and turns its outcome into an answer.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict

from redis.exceptions import RedisError

from services.common.idempotency import IdempotencyKeyReused
from services.flashsale import errors
from services.flashsale.core import WARM_STATES, SaleCore, utcnow
from services.flashsale.guards import UserRateLimiter
from services.flashsale.metrics import count_purchase

log = logging.getLogger("flashsale.purchase")


class Purchases:
    """Reserve units for a buyer in one script call; release or confirm a reservation exactly once."""

    def __init__(self, core: SaleCore) -> None:
        self.core = core
        # The hot path reads these as its own attributes: one lookup each per purchase, no detour via the core.
        self.store = core.store
        self.sold_out = core.sold_out
        self.catalog = core.catalog
        self.idempotency_ttl = core.settings.idempotency_ttl_seconds
        self.limiter = UserRateLimiter(core.settings.user_rate_per_second, core.settings.user_rate_burst)
        self._local_attempts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._last_redis_log = 0.0

    async def purchase(
        self,
        *,
        sale_id: int,
        user_id: str,
        quantity: int,
        idempotency: str,
        request_fingerprint: str,
        event_extra: str = "",
        traceparent: str = "",
    ) -> tuple[str, int]:
        """Reserve units for a user; returns (reservation id, quantity) or raises a domain error."""
        if self.sold_out.is_sold_out(sale_id):
            return await self._answer_sold_out(sale_id, user_id, idempotency, request_fingerprint)
        if not self.limiter.allow(user_id, idempotency):
            if sale_id in self.catalog:
                self._local_attempts[sale_id]["n_rate_limited"] += 1
            count_purchase(self.core, sale_id, "rate_limited")
            raise errors.RateLimited("Slow down and retry", headers={"Retry-After": "1"})
        self.limiter.begin(user_id, idempotency)
        accepted = False
        try:
            outcome = await self.store.reserve_stock(
                sale_id=sale_id,
                user_id=user_id,
                quantity=quantity,
                request_fingerprint=request_fingerprint,
                idempotency=idempotency,
                reservation_id=os.urandom(16).hex(),
                idempotency_ttl=self.idempotency_ttl,
                reserved_at=utcnow().isoformat(),
                event_extra=event_extra,
                traceparent=traceparent,
            )
            accepted = outcome.kind in ("OK", "REPLAY")
        except RedisError as exc:
            # Unknown outcome: the script may have run. A retry with the same key tells the truth.
            raise self._unavailable(sale_id, exc) from None
        finally:
            self.limiter.end(user_id, idempotency, accepted=accepted)
        kind = outcome.kind
        count_purchase(self.core, sale_id, kind, outcome.quantity)
        if kind == "OK":
            if outcome.sold_out:
                self.sold_out.mark(sale_id)
                await self.core.notify(f"soldout:{sale_id}")
            return outcome.reservation_id, outcome.quantity
        if kind == "REPLAY":
            return outcome.reservation_id, outcome.quantity
        if kind == "SOLD_OUT":
            self.sold_out.mark(sale_id)
            raise errors.SoldOut("This sale is sold out")
        if kind == "LIMIT":
            bought, limit = int(outcome.detail[0]), int(outcome.detail[1])
            raise errors.PurchaseLimitExceeded(
                f"You asked for {quantity} and hold {bought} of at most {limit} units in this sale",
                extra={"requested": quantity, "bought": bought, "limit": limit},
            )
        if kind == "INSUFFICIENT":
            raise errors.InsufficientStock(
                f"Only {outcome.detail[0]} units left", extra={"remaining": int(outcome.detail[0])}
            )
        if kind == "KEY_REUSED":
            raise IdempotencyKeyReused("This Idempotency-Key was used with a different request body")
        if kind == "NOT_LIVE":
            raise errors.SaleNotLive(self._not_live_reason(sale_id, str(outcome.detail[0])))
        # NOT_FOUND: the sale has no stock in Redis.
        entry = self.catalog.get(sale_id)
        if entry is None:
            raise errors.SaleNotFound(f"No sale {sale_id}")
        if entry.state in WARM_STATES:
            # Live in the record but not in Redis: Redis lost data. Fail closed until reconciled.
            raise errors.StockUnavailable("Sale stock is not loaded; purchases are refused until it is")
        raise errors.SaleNotLive(self._not_live_reason(sale_id, entry.state.value))

    async def _answer_sold_out(
        self, sale_id: int, user_id: str, idempotency: str, request_fingerprint: str
    ) -> tuple[str, int]:
        """A sold-out sale decides nothing new, but a replay of an accepted purchase keeps its first answer:
        one read-only look at the key instead of the purchase script."""
        try:
            outcome = await self.store.stored_answer(
                sale_id=sale_id, user_id=user_id, idempotency=idempotency, request_fingerprint=request_fingerprint
            )
        except RedisError as exc:
            # Whether this key was accepted cannot be told: a plain SOLD_OUT could deny a held reservation.
            raise self._unavailable(sale_id, exc) from None
        if outcome.kind == "REPLAY":
            count_purchase(self.core, sale_id, "REPLAY")
            return outcome.reservation_id, outcome.quantity
        if outcome.kind == "KEY_REUSED":
            count_purchase(self.core, sale_id, "KEY_REUSED")
            raise IdempotencyKeyReused("This Idempotency-Key was used with a different request body")
        self._local_attempts[sale_id]["n_sold_out"] += 1
        count_purchase(self.core, sale_id, "SOLD_OUT")
        raise errors.SoldOut("This sale is sold out")

    def _unavailable(self, sale_id: int, exc: Exception) -> errors.StockUnavailable:
        count_purchase(self.core, sale_id, "unavailable")
        self._log_redis_failure(sale_id, exc)
        return errors.StockUnavailable(
            "Stock service unavailable; retry with the same Idempotency-Key", headers={"Retry-After": "1"}
        )

    def _log_redis_failure(self, sale_id: int, exc: Exception) -> None:
        # The rejection path stays cheap during an outage: one line every few seconds, not one per request.
        now = time.monotonic()
        if now - self._last_redis_log > 5:
            self._last_redis_log = now
            log.warning("purchase script failed for sale %s: %s: %s", sale_id, type(exc).__name__, exc)

    def _not_live_reason(self, sale_id: int, state: str) -> str:
        entry = self.catalog.get(sale_id)
        now = utcnow()
        if state in ("scheduled", "live") and entry is not None:
            if now < entry.starts_at:
                return f"The sale starts at {entry.starts_at.isoformat()}"
            if now >= entry.ends_at:
                return "The sale has ended"
        return f"The sale is {state}"

    async def flush_local_attempts(self) -> None:
        """Add rejections counted in this process to the sale's shared counters."""
        if not self._local_attempts:
            return
        counts = {sid: dict(v) for sid, v in self._local_attempts.items()}
        self._local_attempts.clear()
        await self.store.add_attempts(counts)

    async def release_reservation(self, *, sale_id: int, reservation_id: str) -> bool:
        """Give a reservation's units back exactly once; True if this call released it."""
        outcome = await self.store.release_reservation(sale_id=sale_id, reservation_id=reservation_id)
        if outcome.kind != "RELEASED":
            return False
        if outcome.was_sold_out:
            self.sold_out.clear(sale_id)
            await self.core.notify(f"buyable:{sale_id}")
        return True

    async def confirm_reservation(self, *, sale_id: int, reservation_id: str) -> bool:
        """Turn a reservation into a sold unit exactly once."""
        return await self.store.confirm_reservation(sale_id=sale_id, reservation_id=reservation_id) == "CONFIRMED"

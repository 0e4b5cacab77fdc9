"""Flashsale business logic: the purchase, the sale lifecycle, storefront views and stats."""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.idempotency import IdempotencyKeyReused
from services.common.logs import request_id_var
from services.flashsale import errors
from services.flashsale.clients import InventoryClient, OrderRecordClient
from services.flashsale.config import FlashSaleSettings
from services.flashsale.guards import SoldOutFlags, UserRateLimiter
from services.flashsale.models import AuditEntry, Sale, SaleState
from services.flashsale.schemas import MAX_QUANTITY, SaleCreate, SaleOut, SaleStats, SaleUpdate, SaleView
from services.flashsale.store import NOTIFY_CHANNEL, StockStore

log = logging.getLogger("flashsale.service")

PURCHASES = Counter("flashsale_purchase_attempts_total", "Purchase attempts by outcome", ["outcome"])
SYSTEM_ACTOR = "system"


@functools.cache
def _purchase_counter(outcome: str) -> Any:
    # A labels() lookup per purchase costs more than the increment; the outcomes are a handful.
    return PURCHASES.labels(outcome.lower())


WARM_STATES = {SaleState.SCHEDULED, SaleState.LIVE, SaleState.PAUSED}


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _from_ms(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(int(value) / 1000, UTC) if value else None


def threshold_units(quantity: int, pct: int) -> int:
    """Remaining units at or below which the low-stock alert fires."""
    return math.ceil(quantity * pct / 100)


def snapshot(sale: Sale) -> dict[str, Any]:
    """The sale as JSON-ready data, for the audit log and the catalog."""
    return SaleOut.model_validate(sale).model_dump(mode="json")


@dataclass
class CatalogEntry:
    """What the storefront and the purchase path need to know of a sale without a DB call."""

    id: int
    data: dict[str, Any]
    state: SaleState
    starts_at: datetime
    ends_at: datetime
    updated_at: datetime


class FlashSaleService:
    """Everything flashsale does, over one Redis pool and one engine."""

    def __init__(
        self,
        *,
        settings: FlashSaleSettings,
        redis: Redis,
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sessions = sessions
        self.store = StockStore(redis, settings.redis_url)
        self.sold_out = SoldOutFlags(settings.sold_out_cache_seconds)
        self.limiter = UserRateLimiter(settings.user_rate_per_second, settings.user_rate_burst)
        self.catalog: dict[int, CatalogEntry] = {}
        self._local_attempts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._status_cache: dict[int, tuple[float, dict[str, str]]] = {}
        self._last_redis_log = 0.0
        self.inventory = InventoryClient(settings) if settings.inventory_url else None
        self.orders = OrderRecordClient(settings) if settings.order_url else None

    async def _allocate(self, sale: Sale) -> None:
        """Make the warehouse allocation match the sale's quantity; called before the sale's change commits,
        so a refusal (409 INSUFFICIENT_STOCK, SKU_NOT_FOUND) or an unreachable warehouse changes nothing."""
        if self.inventory is not None:
            await self.inventory.set_allocation(sale_id=sale.id, sku=sale.sku, allocated=sale.quantity)

    async def aclose(self) -> None:
        """Close the clients of other services and the purchase connection."""
        for client in (self.inventory, self.orders):
            if client is not None:
                await client.aclose()
        await self.store.aclose()

    # ---------------------------------------------------------------- the purchase

    async def purchase(
        self,
        *,
        sale_id: int,
        user_id: str,
        quantity: int,
        idempotency: str,
        request_fingerprint: str,
        event_extra: str = "",
    ) -> tuple[str, int]:
        """Reserve units for a user; returns (reservation id, quantity) or raises a domain error."""
        if self.sold_out.is_sold_out(sale_id):
            return await self._answer_sold_out(sale_id, user_id, idempotency, request_fingerprint)
        if not self.limiter.allow(user_id, idempotency):
            if sale_id in self.catalog:
                self._local_attempts[sale_id]["n_rate_limited"] += 1
            _purchase_counter("rate_limited").inc()
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
                idempotency_ttl=self.settings.idempotency_ttl_seconds,
                reserved_at=utcnow().isoformat(),
                event_extra=event_extra,
            )
            accepted = outcome.kind in ("OK", "REPLAY")
        except RedisError as exc:
            # Unknown outcome: the script may have run. A retry with the same key tells the truth.
            raise self._unavailable(sale_id, exc) from None
        finally:
            self.limiter.end(user_id, idempotency, accepted=accepted)
        kind = outcome.kind
        _purchase_counter(kind).inc()
        if kind == "OK":
            if outcome.sold_out:
                self.sold_out.mark(sale_id)
                await self._notify(f"soldout:{sale_id}")
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
            _purchase_counter("replay").inc()
            return outcome.reservation_id, outcome.quantity
        if outcome.kind == "KEY_REUSED":
            _purchase_counter("key_reused").inc()
            raise IdempotencyKeyReused("This Idempotency-Key was used with a different request body")
        self._local_attempts[sale_id]["n_sold_out"] += 1
        _purchase_counter("sold_out").inc()
        raise errors.SoldOut("This sale is sold out")

    def _unavailable(self, sale_id: int, exc: Exception) -> errors.StockUnavailable:
        _purchase_counter("unavailable").inc()
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

    async def _notify(self, message: str) -> None:
        try:
            await self.redis.publish(NOTIFY_CHANNEL, message)
        except RedisError:
            log.warning("could not publish %s", message)

    # ---------------------------------------------------------------- release and confirm

    async def release_reservation(self, *, sale_id: int, reservation_id: str) -> bool:
        """Give a reservation's units back exactly once; True if this call released it."""
        outcome = await self.store.release_reservation(sale_id=sale_id, reservation_id=reservation_id)
        if outcome.kind != "RELEASED":
            return False
        if outcome.was_sold_out:
            self.sold_out.clear(sale_id)
            await self._notify(f"buyable:{sale_id}")
        return True

    async def confirm_reservation(self, *, sale_id: int, reservation_id: str) -> bool:
        """Turn a reservation into a sold unit exactly once."""
        return await self.store.confirm_reservation(sale_id=sale_id, reservation_id=reservation_id) == "CONFIRMED"

    # ---------------------------------------------------------------- storefront

    async def refresh_catalog(self) -> None:
        """Reload the sales this replica serves from PostgreSQL."""
        async with self.sessions() as session:
            recent = utcnow() - timedelta(days=1)
            query = select(Sale).where((Sale.state != SaleState.ENDED.value) | (Sale.ended_at > recent))
            rows = (await session.scalars(query.order_by(Sale.starts_at))).all()
        fresh = {s.id: self._entry(s) for s in rows}
        # A change this replica committed while the rows were read is newer than what was read: a sale
        # started or created meanwhile must not vanish from the storefront until the next refresh.
        for sale_id, entry in self.catalog.items():
            read = fresh.get(sale_id)
            if (read is None and entry.state != SaleState.ENDED) or (read and entry.updated_at > read.updated_at):
                fresh[sale_id] = entry
        self.catalog = fresh

    @staticmethod
    def _entry(sale: Sale) -> CatalogEntry:
        return CatalogEntry(
            sale.id, snapshot(sale), SaleState(sale.state), sale.starts_at, sale.ends_at, sale.updated_at
        )

    async def _status(self, sale_id: int) -> dict[str, str]:
        # A crowd polls the countdown; one Redis read per replica per short interval is enough.
        now = time.monotonic()
        cached = self._status_cache.get(sale_id)
        if cached and cached[0] > now:
            return cached[1]
        try:
            status = await self.store.live_status(sale_id)
        except RedisError:
            if cached:  # Redis down: nothing sells, so the last status read still tells the stock
                return cached[1]
            raise
        self._status_cache[sale_id] = (now + self.settings.status_cache_seconds, status)
        return status

    async def view(self, sale_id: int) -> SaleView:
        """A sale's storefront detail: countdown and live remaining stock."""
        entry = self.catalog.get(sale_id)
        if entry is None or entry.state == SaleState.DRAFT:
            raise errors.SaleNotFound(f"No sale {sale_id}")
        try:
            status = await self._status(sale_id)
        except RedisError:
            raise errors.StockUnavailable("Live stock is unavailable right now", headers={"Retry-After": "1"}) from None
        return self._view(entry, status)

    def _view(self, entry: CatalogEntry, status: dict[str, str]) -> SaleView:
        now = utcnow()
        data = entry.data
        state = self.effective_state(entry.state, status.get("state"), entry.starts_at, entry.ends_at, now)
        quantity = int(status.get("quantity", data["quantity"]))
        remaining = int(status.get("remaining", data["quantity"] if state != SaleState.ENDED else 0))
        return SaleView(
            id=entry.id,
            sku=data["sku"],
            title=data["title"],
            price=data["price"],
            original_price=data["original_price"],
            currency=data["currency"],
            per_user_limit=data["per_user_limit"],
            state=state.value,
            starts_at=entry.starts_at,
            ends_at=entry.ends_at,
            server_time=now,
            seconds_to_start=max(0.0, (entry.starts_at - now).total_seconds()),
            seconds_to_end=max(0.0, (entry.ends_at - now).total_seconds()),
            quantity=quantity,
            remaining=remaining,
            sold_out=remaining <= 0 and state in (SaleState.LIVE, SaleState.PAUSED),
        )

    @staticmethod
    def effective_state(
        recorded: SaleState, redis_state: str | None, starts_at: datetime, ends_at: datetime, now: datetime
    ) -> SaleState:
        """The state a buyer meets: Redis (the gate) and the window win over a lagging record."""
        if recorded in (SaleState.DRAFT, SaleState.ENDED):
            return recorded
        if now >= ends_at:
            return SaleState.ENDED
        if redis_state == SaleState.PAUSED.value:
            return SaleState.PAUSED
        if recorded == SaleState.SCHEDULED and now >= starts_at:
            return SaleState.LIVE
        return recorded

    async def list_public(self) -> list[SaleView]:
        """Live and upcoming sales, soonest first."""
        out = []
        now = utcnow()
        for entry in self.catalog.values():
            if entry.state not in WARM_STATES or entry.ends_at <= now:
                continue
            try:
                status = await self._status(entry.id)
            except RedisError:
                status = {}
            out.append(self._view(entry, status))
        out.sort(key=lambda v: v.starts_at)
        return out

    # ---------------------------------------------------------------- admin

    async def _audit(
        self,
        session: AsyncSession,
        *,
        actor: str,
        action: str,
        sale_id: int | None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> AuditEntry:
        entry = AuditEntry(
            actor=actor,
            action=action,
            sale_id=sale_id,
            before=before,
            after=after,
            request_id=request_id_var.get() or None,
            note=note,
        )
        session.add(entry)
        return entry

    async def audit_read(self, *, actor: str, action: str, sale_id: int | None = None) -> None:
        """Record an admin read (who looked at what, when)."""
        async with self.sessions.begin() as session:
            await self._audit(session, actor=actor, action=action, sale_id=sale_id)

    async def create_sale(self, *, actor: str, data: SaleCreate) -> dict[str, Any]:
        """Create a sale in draft."""
        allocated: tuple[int, str] | None = None
        try:
            async with self.sessions.begin() as session:
                sale = Sale(**data.model_dump(), state=SaleState.DRAFT.value)
                session.add(sale)
                await session.flush()
                await session.refresh(sale)
                allocated = (sale.id, sale.sku)
                await self._allocate(sale)
                after = snapshot(sale)
                await self._audit(session, actor=actor, action="create", sale_id=sale.id, after=after)
        except BaseException as exc:
            # A refusal by the warehouse changed nothing; anything else after the call (an unanswered call
            # included: it may have been applied) may have left stock allocated to a sale that never exists.
            if allocated is not None and self.inventory is not None and not isinstance(exc, errors.DependencyRefused):
                await self._release_unborn_allocation(*allocated)
            raise
        self.catalog[sale.id] = self._entry(sale)
        await self._notify("catalog")
        return after

    async def _release_unborn_allocation(self, sale_id: int, sku: str) -> None:
        """Give back the warehouse stock allocated to a sale whose creation did not commit.

        Sale ids come from a sequence and are never reused, so nothing else can ever settle that allocation:
        left alone, its units would stay out of the warehouse's available stock for good. Released only when
        the sale row is known to be absent (a COMMIT whose answer was lost may have succeeded)."""
        assert self.inventory is not None
        try:
            async with self.sessions() as session:
                exists = await session.scalar(select(Sale.id).where(Sale.id == sale_id))
        except Exception as exc:  # the database is unreachable: whether the sale exists cannot be told
            log.error("sale %s: creation failed and its allocation of %s is kept (%s)", sale_id, sku, exc)
            return
        if exists is not None:
            return
        try:
            await self.inventory.set_allocation(sale_id=sale_id, sku=sku, allocated=0)
            log.warning("sale %s was not created: its allocation of %s went back to the warehouse", sale_id, sku)
        except Exception as exc:
            log.error("sale %s was not created and its allocation of %s could not be released: %s", sale_id, sku, exc)

    async def _locked(self, session: AsyncSession, sale_id: int) -> Sale:
        sale = await session.scalar(select(Sale).where(Sale.id == sale_id).with_for_update())
        if sale is None:
            raise errors.SaleNotFound(f"No sale {sale_id}")
        return sale

    async def _current_state(self, sale: Sale) -> SaleState:
        redis_state = None
        if SaleState(sale.state) in WARM_STATES:
            redis_state = (await self.store.live_status(sale.id)).get("state")
        return self.effective_state(SaleState(sale.state), redis_state, sale.starts_at, sale.ends_at, utcnow())

    def _redis_config(self, sale: Sale) -> dict[str, Any]:
        return {
            "state": sale.state,
            "starts": _ms(sale.starts_at),
            "ends": _ms(sale.ends_at),
            "limit": sale.per_user_limit,
            "threshold": threshold_units(sale.quantity, sale.low_stock_threshold_pct),
            "policy": sale.low_stock_policy,
            "price": sale.price,
            "currency": sale.currency,
            "sku": sale.sku,
        }

    async def update_sale(self, *, actor: str, sale_id: int, data: SaleUpdate) -> dict[str, Any]:
        """Edit a sale that has not gone live yet."""
        changes = data.model_dump(exclude_unset=True)
        if not changes:
            raise errors.InvalidSale("Nothing to update")
        if any(v is None for v in changes.values()):
            raise errors.InvalidSale("Fields cannot be set to null")
        async with self.sessions.begin() as session:
            sale = await self._locked(session, sale_id)
            state = await self._current_state(sale)
            if state not in (SaleState.DRAFT, SaleState.SCHEDULED):
                raise errors.SaleAlreadyStarted(f"The sale is {state.value}; only draft or scheduled sales change")
            before = snapshot(sale)
            for key, value in changes.items():
                setattr(sale, key, value)
            if sale.ends_at <= sale.starts_at:
                raise errors.InvalidSale("ends_at must be after starts_at")
            if sale.price > sale.original_price:
                raise errors.InvalidSale("price must not exceed original_price")
            if sale.state == SaleState.SCHEDULED.value and sale.starts_at <= utcnow():
                raise errors.SaleAlreadyStarted("A scheduled sale cannot be moved to start in the past")
            if "quantity" in changes and before["quantity"] != sale.quantity:
                await self._allocate(sale)
            if sale.state == SaleState.SCHEDULED.value:
                await self._warm(sale, reset=True)
            await session.flush()
            await session.refresh(sale)
            after = snapshot(sale)
            await self._audit(session, actor=actor, action="update", sale_id=sale_id, before=before, after=after)
        self.catalog[sale.id] = self._entry(sale)
        await self._notify("catalog")
        return after

    async def _warm(self, sale: Sale, *, reset: bool, held: dict[str, Any] | None = None) -> None:
        """Load the sale into Redis; `held` overrides fields (state, window) that must wait for the commit."""
        outcome = await self.store.warm(
            sale_id=sale.id,
            incarnation=str(_ms(sale.created_at)),
            quantity=sale.quantity,
            config={**self._redis_config(sale), **(held or {})},
            reset=reset,
        )
        if outcome == "STARTED":
            raise errors.SaleAlreadyStarted("Units were already reserved; the stock can no longer be reset")
        if outcome == "STALE":
            raise errors.StaleStock(
                f"Redis holds stock of an earlier sale {sale.id} (the database was recreated); "
                f"clear its {{fs:{sale.id}}} keys or point at another Redis"
            )

    async def add_stock(self, *, actor: str, sale_id: int, units: int) -> dict[str, Any]:
        """Add units to a sale (draft, scheduled, live or paused).

        The record is committed first, then Redis gets the units once (keyed by the audit entry): if
        Redis fails in between, live stock is short of the record (undersell, repaired by reconciliation),
        never ahead of it.
        """
        async with self.sessions.begin() as session:
            sale = await self._locked(session, sale_id)
            if sale.state == SaleState.ENDED.value:
                raise errors.InvalidTransition("Cannot add stock to an ended sale")
            if sale.quantity + units > MAX_QUANTITY:
                raise errors.InvalidSale(f"A sale holds at most {MAX_QUANTITY} units")
            before = snapshot(sale)
            sale.quantity += units
            await self._allocate(sale)
            await session.flush()
            await session.refresh(sale)
            after = snapshot(sale)
            entry = await self._audit(
                session, actor=actor, action="add_stock", sale_id=sale_id, before=before, after=after
            )
            await session.flush()
            operation = str(entry.id)
        if sale.state in WARM_STATES:
            threshold = threshold_units(sale.quantity, sale.low_stock_threshold_pct)
            try:
                outcome = await self.store.add_stock(
                    sale_id=sale.id, units=units, threshold=threshold, operation=operation
                )
            except RedisError:
                outcome = "UNAVAILABLE"
            if outcome not in ("OK", "DONE"):
                log.error("add_stock %s on sale %s recorded but not applied to Redis (%s)", operation, sale_id, outcome)
                raise errors.StockUnavailable(
                    f"The sale now records {sale.quantity} units, but live stock was not updated; "
                    "do not repeat the call: reconciliation applies it"
                )
        self.sold_out.clear(sale.id)
        self.catalog[sale.id] = self._entry(sale)
        await self._notify(f"buyable:{sale.id}")
        await self._notify("catalog")
        return after

    async def list_sales(self, *, state: SaleState | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """Sales for ops, newest first."""
        async with self.sessions() as session:
            query = select(Sale).order_by(Sale.id.desc()).limit(limit).offset(offset)
            if state is not None:
                query = query.where(Sale.state == state.value)
            return [snapshot(s) for s in (await session.scalars(query)).all()]

    async def get_sale(self, sale_id: int) -> Sale:
        """One sale from the record."""
        async with self.sessions() as session:
            sale = await session.get(Sale, sale_id)
        if sale is None:
            raise errors.SaleNotFound(f"No sale {sale_id}")
        return sale

    async def stats(self, sale_id: int) -> SaleStats:
        """Sold, reserved, remaining, attempts by outcome, when it sold out."""
        sale = await self.get_sale(sale_id)
        await self.flush_local_attempts()
        c = await self.store.counters(sale_id)
        state = self.effective_state(SaleState(sale.state), c.get("state"), sale.starts_at, sale.ends_at, utcnow())
        attempts = {
            name: int(c.get(f"n_{name}", 0))
            for name in ("ok", "sold_out", "limit", "insufficient", "not_live", "rate_limited")
        }
        return SaleStats(
            sale_id=sale_id,
            state=state.value,
            quantity=int(c.get("quantity", sale.quantity)),
            remaining=int(c.get("remaining", sale.quantity)),
            reserved=int(c.get("reserved", 0)),
            sold=int(c.get("sold", 0)),
            released=int(c.get("released", 0)),
            returned=int(c.get("returned", sale.returned_units)),
            attempts=attempts,
            sold_out_at=_from_ms(c.get("sold_out_at")),
            first_sold_out_at=_from_ms(c.get("first_sold_out_at")),
        )

    async def audit_log(self, *, sale_id: int | None, limit: int, offset: int) -> list[AuditEntry]:
        """Audited admin actions, newest first."""
        async with self.sessions() as session:
            query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
            if sale_id is not None:
                query = query.where(AuditEntry.sale_id == sale_id)
            return list((await session.scalars(query)).all())

    # ---------------------------------------------------------------- automatic transitions

    async def run_schedule_tick(self) -> int:
        """Start sales whose window opened and end those whose window closed; safe on every replica."""
        moved = 0
        now = utcnow()
        async with self.sessions.begin() as session:
            due = (
                await session.scalars(
                    select(Sale)
                    .where(
                        ((Sale.state == SaleState.SCHEDULED.value) & (Sale.starts_at <= now))
                        | (Sale.state.in_([s.value for s in WARM_STATES]) & (Sale.ends_at <= now))
                    )
                    .with_for_update(skip_locked=True)
                    .limit(100)
                )
            ).all()
            for sale in due:
                before = snapshot(sale)
                if sale.ends_at <= now:
                    sale.state = SaleState.ENDED.value
                    sale.ended_at = now
                    action = "auto_end"
                    await self.store.set_state(sale.id, sale.state)
                else:
                    # Compare-and-set: the purchase script may already have paused it (alert_and_pause).
                    held = await self.store.advance_state(
                        sale.id, expected=SaleState.SCHEDULED.value, new=SaleState.LIVE.value
                    )
                    paused = held == SaleState.PAUSED.value
                    sale.state = SaleState.PAUSED.value if paused else SaleState.LIVE.value
                    sale.went_live_at = sale.went_live_at or now
                    action = "auto_start_paused" if paused else "auto_start"
                await session.flush()
                await session.refresh(sale)
                await self._audit(
                    session,
                    actor=SYSTEM_ACTOR,
                    action=action,
                    sale_id=sale.id,
                    before=before,
                    after=snapshot(sale),
                )
                self.catalog[sale.id] = self._entry(sale)
                moved += 1
        if moved:
            await self._notify("catalog")
        return moved

    async def sync_auto_pause(self, sale_id: int) -> None:
        """Record a pause the purchase script made on its own (alert_and_pause)."""
        async with self.sessions.begin() as session:
            sale = await self._locked(session, sale_id)
            if sale.state not in (SaleState.LIVE.value, SaleState.SCHEDULED.value):
                return
            if (await self.store.live_status(sale_id)).get("state") != SaleState.PAUSED.value:
                return  # an admin resumed it before this caught up
            before = snapshot(sale)
            sale.state = SaleState.PAUSED.value
            sale.went_live_at = sale.went_live_at or utcnow()
            await session.flush()
            await session.refresh(sale)
            await self._audit(
                session,
                actor=SYSTEM_ACTOR,
                action="auto_pause",
                sale_id=sale_id,
                before=before,
                after=snapshot(sale),
                note="low-stock threshold crossed with policy alert_and_pause",
            )
        self.catalog[sale.id] = self._entry(sale)
        await self._notify("catalog")

"""Inventory business logic: every change is one transaction that locks the SKU row, moves its counters,
appends a ledger row and, when it crosses the low-stock threshold, writes the alert to the outbox;
Redis (mirror, alerts stream) is written only after the commit."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.idempotency import IdempotencyStore, fingerprint
from services.inventory import errors
from services.inventory.alerts import (
    AlertRelay,
    enqueue,
    open_reminder,
    replenish_units,
    resolve_reminders,
    threshold_units,
)
from services.inventory.config import InventorySettings
from services.inventory.models import (
    AlertEvent,
    Allocation,
    AuditEntry,
    Hold,
    HoldState,
    LedgerEntry,
    LedgerKind,
    ReplenishmentReminder,
    Sku,
)
from services.inventory.schemas import (
    AllocationOut,
    Availability,
    Counters,
    HoldOut,
    LedgerOut,
    Reconciliation,
    ReminderOut,
    SkuCreate,
    SkuDetail,
    SkuOut,
    SkuReconciliation,
)
from services.inventory.store import StockMirror

log = logging.getLogger("inventory.service")

LOW_STOCK_ALERTS = Counter("inventory_low_stock_alerts_total", "Low-stock alerts raised (one per crossing)")
HOLDS_EXPIRED = Counter("inventory_holds_expired_total", "Holds whose units went back to stock on their own")
SKUS_OUT_OF_BALANCE = Gauge(
    "inventory_reconciliation_skus_out_of_balance", "SKUs whose PostgreSQL counters or ledger do not add up"
)
MIRROR_DRIFT = Gauge("inventory_reconciliation_mirror_drift", "SKUs whose Redis copy of `available` is missing or off")
# Far above any real warehouse, far below what BIGINT holds: a runaway restock is refused, not overflowed.
MAX_ON_HAND = 10**15
SYSTEM_ACTOR = "system:hold-sweeper"
RECONCILER_ACTOR = "system:reconciler"
JOB_LOCK_PREFIX = "inv:job:"
_RELEASE_LOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def _above_threshold(row: Sku) -> bool:
    threshold = threshold_units(row)
    return threshold is None or row.available > threshold


@dataclass
class AfterCommit:
    """What Redis must learn once the transaction committed: mirrored counters and outbox ids of raised alerts."""

    mirrors: dict[str, tuple[int, int]] = field(default_factory=dict)
    alerts: list[int] = field(default_factory=list)


def _counters(row: Sku) -> dict[str, int]:
    return {
        "on_hand": row.on_hand,
        "available": row.available,
        "allocated": row.allocated,
        "held": row.held,
        "sold": row.sold,
    }


def _hold_out(hold: Hold) -> HoldOut:
    return HoldOut(hold_id=hold.id, sku=hold.sku, quantity=hold.quantity, state=hold.state, expires_at=hold.expires_at)


def _allocation_out(a: Allocation) -> AllocationOut:
    return AllocationOut(
        sale_id=a.sale_id,
        sku=a.sku,
        allocated=a.allocated,
        returned=a.returned,
        sold=a.sold,
        outstanding=a.allocated - a.returned - a.sold,
    )


class InventoryService:
    """Everything the inventory service does, over one engine and one Redis pool."""

    def __init__(
        self, *, settings: InventorySettings, redis: Redis, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sessions = sessions
        self.mirror = StockMirror(redis, settings.alerts_stream)
        self.relay = AlertRelay(settings=settings, sessions=sessions, mirror=self.mirror)
        self.hold_keys = IdempotencyStore(redis, "inventory-holds")
        self.admin_keys = IdempotencyStore(redis, "inventory-admin")

    # ---------------------------------------------------------------- the one way stock moves

    async def _lock(self, session: AsyncSession, sku: str) -> Sku:
        row = await session.scalar(select(Sku).where(Sku.sku == sku).with_for_update())
        if row is None:
            raise errors.SkuNotFound(f"No SKU {sku}")
        return row

    async def _record(
        self,
        session: AsyncSession,
        effects: AfterCommit,
        row: Sku,
        *,
        kind: LedgerKind,
        quantity: int,
        actor: str,
        ref: str | None = None,
        reason: str | None = None,
        rearm: bool = False,
    ) -> None:
        """Append the ledger row for a change already made to `row`, and watch the low-stock threshold.

        A crossing writes its alert to the outbox and opens the replenishment reminder; a restock that lifts
        `available` above the threshold resolves the reminder. All in the caller's transaction.
        """
        entry = LedgerEntry(
            sku=row.sku,
            kind=kind.value,
            quantity=quantity,
            ref=ref,
            actor=actor,
            reason=reason,
            available_after=row.available,
        )
        session.add(entry)
        alert = self._watch_threshold(row, rearm=rearm)
        await session.flush()
        effects.mirrors[row.sku] = (row.available, entry.id)
        if alert is not None:
            reminder = await open_reminder(session, sku=row.sku, suggested=alert["replenish"], at=utcnow())
            alert["reminder_id"] = reminder.id
            outbox = await enqueue(session, event=AlertEvent.LOW_STOCK, sku=row.sku, payload=alert)
            effects.alerts.append(outbox.id)
        elif rearm and _above_threshold(row):
            await resolve_reminders(session, sku=row.sku, actor=actor, at=utcnow())

    def _watch_threshold(self, row: Sku, *, rearm: bool) -> dict[str, Any] | None:
        """Disarm and describe an alert when `available` is at/below the threshold and the alert is armed.

        Only a restock (or an upward adjustment) that lifts `available` above the threshold re-arms it,
        so units trickling back from holds do not make one shortage ring twice.
        """
        threshold = threshold_units(row)
        if threshold is None:
            return None
        if row.available > threshold:
            if rearm:
                row.alert_armed = True
            return None
        if not row.alert_armed:
            return None
        row.alert_armed = False
        return {
            "sku": row.sku,
            "available": row.available,
            "on_hand": row.on_hand,
            "threshold": threshold,
            "threshold_kind": row.threshold_kind,
            "threshold_value": row.low_stock_threshold,
            # Enough to bring available back to twice the threshold (at least one unit above it).
            "replenish": replenish_units(threshold, row.available),
            "at": utcnow().isoformat(),
        }

    async def _publish(self, effects: AfterCommit) -> None:
        """Tell Redis what committed. A Redis failure here is logged, never reported as a failed change."""
        for sku, (available, seq) in effects.mirrors.items():
            try:
                await self.mirror.write(sku=sku, available=available, seq=seq)
            except RedisError as exc:
                log.warning("mirror write for %s failed (%s); reads fall back later", sku, type(exc).__name__)
        if effects.alerts:
            LOW_STOCK_ALERTS.inc(len(effects.alerts))
            # The alerts are safe in the outbox; streaming them now only saves the relay's wait.
            try:
                await self.relay.relay_once(ids=effects.alerts)
            except (RedisError, SQLAlchemyError, OSError) as exc:
                log.warning("alerts %s left to the relay (%s)", effects.alerts, type(exc).__name__)

    async def _audit(self, session: AsyncSession, **fields: Any) -> None:
        session.add(AuditEntry(**fields))

    async def idempotent(
        self,
        *,
        key: str | None,
        actor: str,
        payload: dict[str, Any],
        action: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Run an admin change once per Idempotency-Key (when one is sent); a replay gets the first answer."""
        if key is None:
            return await action()

        async def run() -> tuple[int, Any]:
            result = await action()
            return 200, result.model_dump(mode="json")

        _status, body = await self.admin_keys.run(
            key=key, owner=actor, request_fingerprint=fingerprint(payload), action=run
        )
        return body

    # ---------------------------------------------------------------- SKUs (admin)

    def _check_threshold(self, value: int | None, kind: str) -> None:
        if value is not None and kind == "percent" and value > 100:
            raise errors.InvalidThreshold("A percent threshold must be between 0 and 100")

    async def create_sku(self, *, actor: str, data: SkuCreate) -> SkuOut:
        """Create a SKU; its initial stock is recorded as a restock."""
        self._check_threshold(data.low_stock_threshold, data.threshold_kind)
        effects = AfterCommit()
        try:
            async with self.sessions.begin() as session:
                if await session.get(Sku, data.sku) is not None:
                    raise errors.SkuExists(f"SKU {data.sku} already exists")
                row = Sku(
                    sku=data.sku,
                    name=data.name,
                    on_hand=data.initial_stock,
                    available=data.initial_stock,
                    allocated=0,
                    held=0,
                    sold=0,
                    low_stock_threshold=data.low_stock_threshold,
                    threshold_kind=data.threshold_kind,
                    alert_armed=True,
                )
                session.add(row)
                await session.flush()
                if data.initial_stock:
                    await self._record(
                        session,
                        effects,
                        row,
                        kind=LedgerKind.RESTOCK,
                        quantity=data.initial_stock,
                        actor=actor,
                        reason="initial stock",
                        rearm=True,
                    )
                out = SkuOut.model_validate(row)
                await self._audit(
                    session, actor=actor, action="create_sku", sku=row.sku, after=out.model_dump(mode="json")
                )
        except IntegrityError:
            raise errors.SkuExists(f"SKU {data.sku} already exists") from None
        await self._publish(effects)
        return out

    async def restock(self, *, actor: str, sku: str, quantity: int, reason: str) -> SkuOut:
        """Add received units to on-hand and available; lifting available above the threshold re-arms the alert."""
        return await self._change_on_hand(actor=actor, sku=sku, delta=quantity, reason=reason, kind=LedgerKind.RESTOCK)

    async def adjust(self, *, actor: str, sku: str, delta: int, reason: str) -> SkuOut:
        """Correct stock after a count: add units, or remove available ones (never below zero)."""
        return await self._change_on_hand(actor=actor, sku=sku, delta=delta, reason=reason, kind=LedgerKind.ADJUST)

    async def _change_on_hand(self, *, actor: str, sku: str, delta: int, reason: str, kind: LedgerKind) -> SkuOut:
        effects = AfterCommit()
        async with self.sessions.begin() as session:
            row = await self._lock(session, sku)
            before = _counters(row)
            if row.available + delta < 0:
                raise errors.InsufficientStock(
                    f"Only {row.available} available; cannot remove {-delta}", extra={"available": row.available}
                )
            if row.on_hand + delta > MAX_ON_HAND:
                raise errors.StockLimitExceeded(f"on_hand may not exceed {MAX_ON_HAND}")
            row.on_hand += delta
            row.available += delta
            await self._record(
                session, effects, row, kind=kind, quantity=delta, actor=actor, reason=reason, rearm=delta > 0
            )
            out = SkuOut.model_validate(row)
            await self._audit(
                session, actor=actor, action=kind.value, sku=sku, before=before, after=_counters(row), note=reason
            )
        await self._publish(effects)
        return out

    async def set_threshold(self, *, actor: str, sku: str, value: int | None, kind: str) -> SkuOut:
        """Set (or clear) the low-stock threshold; the alert is armed while available is above it."""
        self._check_threshold(value, kind)
        async with self.sessions.begin() as session:
            row = await self._lock(session, sku)
            before = {"low_stock_threshold": row.low_stock_threshold, "threshold_kind": row.threshold_kind}
            row.low_stock_threshold = value
            row.threshold_kind = kind
            threshold = threshold_units(row)
            row.alert_armed = threshold is None or row.available > threshold
            after: dict[str, Any] = {
                "low_stock_threshold": value,
                "threshold_kind": kind,
                "alert_armed": row.alert_armed,
            }
            if row.alert_armed:
                # By the new threshold (or with none) the SKU is not short: stop reminding about it.
                after["resolved_reminders"] = await resolve_reminders(session, sku=sku, actor=actor, at=utcnow())
            await self._audit(session, actor=actor, action="set_threshold", sku=sku, before=before, after=after)
            return SkuOut.model_validate(row)

    async def sku_detail(self, sku: str) -> SkuDetail:
        """Counters and the most recent ledger entries."""
        async with self.sessions() as session:
            row = await session.get(Sku, sku)
            if row is None:
                raise errors.SkuNotFound(f"No SKU {sku}")
            entries = await self._ledger(session, sku, limit=self.settings.recent_ledger_entries, before_id=None)
            return SkuDetail(**SkuOut.model_validate(row).model_dump(), ledger=entries)

    async def ledger(self, *, sku: str, limit: int, before_id: int | None) -> list[LedgerOut]:
        """A SKU's ledger, newest first; page with `before_id`."""
        async with self.sessions() as session:
            if await session.get(Sku, sku) is None:
                raise errors.SkuNotFound(f"No SKU {sku}")
            return await self._ledger(session, sku, limit=limit, before_id=before_id)

    async def _ledger(self, session: AsyncSession, sku: str, *, limit: int, before_id: int | None) -> list[LedgerOut]:
        query = select(LedgerEntry).where(LedgerEntry.sku == sku).order_by(LedgerEntry.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(LedgerEntry.id < before_id)
        return [LedgerOut.model_validate(e) for e in await session.scalars(query)]

    async def availability(self, sku: str) -> Availability:
        """Available units from the Redis mirror; from PostgreSQL (and re-mirrored) when Redis has none."""
        try:
            mirrored = await self.mirror.read(sku)
        except RedisError:
            mirrored = None
        if mirrored is not None:
            return Availability(sku=sku, available=mirrored)
        async with self.sessions() as session:
            row = await session.get(Sku, sku)
            if row is None:
                raise errors.SkuNotFound(f"No SKU {sku}")
            seq = await session.scalar(select(func.max(LedgerEntry.id)).where(LedgerEntry.sku == sku))
        if seq:
            await self._publish(AfterCommit(mirrors={sku: (row.available, seq)}))
        return Availability(sku=sku, available=row.available)

    # ---------------------------------------------------------------- allocations to sales (admin)

    async def _allocation(self, session: AsyncSession, sale_id: int, sku: str, *, create: bool = False) -> Allocation:
        """A sale's allocation of a SKU, locked; an empty one when `create` and there is none yet."""
        allocation = await session.get(Allocation, (sale_id, sku), with_for_update=True)
        if allocation is None:
            if not create:
                raise errors.AllocationNotFound(f"Sale {sale_id} has no allocation of {sku}")
            allocation = Allocation(sale_id=sale_id, sku=sku, allocated=0, returned=0, sold=0)
            session.add(allocation)
        return allocation

    async def allocate(self, *, actor: str, sale_id: int, sku: str, quantity: int) -> AllocationOut:
        """Move available units to a sale; refused (nothing changed) when fewer are available."""
        effects = AfterCommit()
        async with self.sessions.begin() as session:
            row = await self._lock(session, sku)
            if row.available < quantity:
                raise errors.InsufficientStock(
                    f"Only {row.available} of {sku} available; {quantity} asked", extra={"available": row.available}
                )
            before = _counters(row)
            allocation = await self._allocation(session, sale_id, sku, create=True)
            allocation.allocated += quantity
            row.available -= quantity
            row.allocated += quantity
            await self._record(
                session, effects, row, kind=LedgerKind.ALLOCATE, quantity=quantity, actor=actor, ref=str(sale_id)
            )
            await self._audit(
                session,
                actor=actor,
                action="allocate",
                sku=sku,
                before=before,
                after=_counters(row),
                note=f"sale {sale_id}",
            )
            out = _allocation_out(allocation)
        await self._publish(effects)
        return out

    async def return_allocation(self, *, actor: str, sale_id: int, sku: str, quantity: int) -> AllocationOut:
        """Give a sale's unsold units back to available."""
        return await self._settle_allocation(
            actor=actor, sale_id=sale_id, sku=sku, quantity=quantity, kind=LedgerKind.RETURN
        )

    async def sell_allocation(self, *, actor: str, sale_id: int, sku: str, quantity: int) -> AllocationOut:
        """Record units a sale sold out of its allocation."""
        return await self._settle_allocation(
            actor=actor, sale_id=sale_id, sku=sku, quantity=quantity, kind=LedgerKind.SELL
        )

    async def _settle_allocation(
        self, *, actor: str, sale_id: int, sku: str, quantity: int, kind: LedgerKind
    ) -> AllocationOut:
        """Close part of a sale's allocation: returned units go back to available, sold ones to sold."""
        effects = AfterCommit()
        async with self.sessions.begin() as session:
            row = await self._lock(session, sku)
            allocation = await self._allocation(session, sale_id, sku)
            self._check_outstanding(allocation, quantity)
            before = _counters(row)
            row.allocated -= quantity
            if kind == LedgerKind.RETURN:
                allocation.returned += quantity
                row.available += quantity
            else:
                allocation.sold += quantity
                row.sold += quantity
            await self._record(session, effects, row, kind=kind, quantity=quantity, actor=actor, ref=str(sale_id))
            await self._audit(
                session,
                actor=actor,
                action=kind.value,
                sku=sku,
                before=before,
                after=_counters(row),
                note=f"sale {sale_id}",
            )
            out = _allocation_out(allocation)
        await self._publish(effects)
        return out

    async def set_allocation(
        self, *, actor: str, sale_id: int, sku: str, allocated: int, sold: int | None, returned: int | None
    ) -> AllocationOut:
        """Bring a sale's allocation to the totals the sale reports (the flashsale service's sync).

        Running totals make the call idempotent: repeating it changes nothing, and a late copy of an older
        one moves `sold` and `returned` nothing backwards (they only grow). `allocated` follows the latest
        call (more is taken from available, less is given back) but never below what was sold or returned;
        flashsale sends it while holding the sale's row lock, so an older quantity cannot arrive late.
        """
        effects = AfterCommit()
        async with self.sessions.begin() as session:
            row = await self._lock(session, sku)
            before = _counters(row)
            allocation = await self._allocation(session, sale_id, sku, create=True)
            sold_now = max(allocation.sold, sold or 0)
            returned_now = max(allocation.returned, returned or 0)
            if sold_now + returned_now > allocated:
                raise errors.AllocationExceeded(
                    f"Sale {sale_id} cannot have {allocated} of {sku} allocated: "
                    f"{sold_now} sold and {returned_now} returned",
                    extra={"sold": sold_now, "returned": returned_now},
                )
            grow = allocated - allocation.allocated
            if grow > row.available:
                raise errors.InsufficientStock(
                    f"Only {row.available} of {sku} available; {grow} more asked for sale {sale_id}",
                    extra={"available": row.available},
                )
            sell, give_back = sold_now - allocation.sold, returned_now - allocation.returned
            moves = [
                (LedgerKind.ALLOCATE if grow > 0 else LedgerKind.RETURN, abs(grow)),
                (LedgerKind.SELL, sell),
                (LedgerKind.RETURN, give_back),
            ]
            row.available += give_back - grow
            row.allocated += grow - sell - give_back
            row.sold += sell
            allocation.allocated, allocation.sold, allocation.returned = allocated, sold_now, returned_now
            for kind, quantity in moves:
                if quantity > 0:
                    await self._record(
                        session, effects, row, kind=kind, quantity=quantity, actor=actor, ref=str(sale_id)
                    )
            if any(quantity > 0 for _kind, quantity in moves):
                await self._audit(
                    session,
                    actor=actor,
                    action="set_allocation",
                    sku=sku,
                    before=before,
                    after=_counters(row),
                    note=f"sale {sale_id}: allocated {allocated}, sold {sold_now}, returned {returned_now}",
                )
            out = _allocation_out(allocation)
        await self._publish(effects)
        return out

    async def open_allocations(self) -> list[AllocationOut]:
        """Every allocation that still holds units (allocated > sold + returned), oldest sale first."""
        async with self.sessions() as session:
            rows = await session.scalars(
                select(Allocation)
                .where(Allocation.allocated > Allocation.sold + Allocation.returned)
                .order_by(Allocation.sale_id, Allocation.sku)
            )
            return [_allocation_out(a) for a in rows]

    async def get_allocation(self, *, sale_id: int, sku: str) -> AllocationOut:
        """A sale's allocation of a SKU."""
        async with self.sessions() as session:
            allocation = await session.get(Allocation, (sale_id, sku))
            if allocation is None:
                raise errors.AllocationNotFound(f"Sale {sale_id} has no allocation of {sku}")
            return _allocation_out(allocation)

    def _check_outstanding(self, allocation: Allocation, quantity: int) -> None:
        outstanding = allocation.allocated - allocation.returned - allocation.sold
        if quantity > outstanding:
            raise errors.AllocationExceeded(
                f"Sale {allocation.sale_id} still holds {outstanding} of {allocation.sku}; {quantity} asked",
                extra={"outstanding": outstanding},
            )

    # ---------------------------------------------------------------- holds (regular checkout)

    async def create_hold(self, *, user_id: str, key: str, sku: str, quantity: int, ttl_seconds: int) -> HoldOut:
        """Set units aside for a checkout until `ttl_seconds` pass; a replayed key returns the same hold."""
        low, high = self.settings.min_hold_seconds, self.settings.max_hold_seconds
        if not low <= ttl_seconds <= high:
            raise errors.InvalidHold(f"ttl_seconds must be between {low} and {high}")

        async def hold() -> tuple[int, Any]:
            out = await self._hold(user_id=user_id, sku=sku, quantity=quantity, ttl_seconds=ttl_seconds)
            return 201, out.model_dump(mode="json")

        payload = {"sku": sku, "quantity": quantity, "ttl_seconds": ttl_seconds}
        _status, body = await self.hold_keys.run(
            key=key, owner=user_id, request_fingerprint=fingerprint(payload), action=hold
        )
        return HoldOut.model_validate(body)

    async def _hold(self, *, user_id: str, sku: str, quantity: int, ttl_seconds: int) -> HoldOut:
        effects = AfterCommit()
        async with self.sessions.begin() as session:
            row = await self._lock(session, sku)
            if row.available < quantity:
                raise errors.InsufficientStock(
                    f"Only {row.available} of {sku} available; {quantity} asked", extra={"available": row.available}
                )
            hold = Hold(
                id=os.urandom(16).hex(),
                sku=sku,
                quantity=quantity,
                user_id=user_id,
                state=HoldState.HELD.value,
                expires_at=utcnow() + timedelta(seconds=ttl_seconds),
            )
            session.add(hold)
            row.available -= quantity
            row.held += quantity
            await self._record(
                session, effects, row, kind=LedgerKind.HOLD, quantity=quantity, actor=user_id, ref=hold.id
            )
            out = _hold_out(hold)
        await self._publish(effects)
        return out

    async def _locked_hold(self, session: AsyncSession, hold_id: str, user_id: str, is_admin: bool) -> Hold:
        hold = await session.get(Hold, hold_id, with_for_update=True)
        if hold is None or (hold.user_id != user_id and not is_admin):
            raise errors.HoldNotFound(f"No hold {hold_id}")
        return hold

    async def _end_hold(
        self, session: AsyncSession, effects: AfterCommit, hold: Hold, *, state: HoldState, actor: str
    ) -> None:
        """Move a held hold's units to sold (confirmed) or back to available (released, expired)."""
        row = await self._lock(session, hold.sku)
        row.held -= hold.quantity
        if state is HoldState.CONFIRMED:
            row.sold += hold.quantity
            kind, reason = LedgerKind.CONFIRM, None
        else:
            row.available += hold.quantity
            kind, reason = LedgerKind.RELEASE, state.value
        hold.state = state.value
        await self._record(
            session, effects, row, kind=kind, quantity=hold.quantity, actor=actor, ref=hold.id, reason=reason
        )

    async def confirm_hold(self, *, hold_id: str, user_id: str, is_admin: bool = False) -> HoldOut:
        """held -> sold. Confirming twice answers the same; a hold past its deadline cannot be confirmed."""
        effects = AfterCommit()
        expired = False
        async with self.sessions.begin() as session:
            hold = await self._locked_hold(session, hold_id, user_id, is_admin)
            if hold.state == HoldState.HELD.value:
                if hold.expires_at <= utcnow():
                    await self._end_hold(session, effects, hold, state=HoldState.EXPIRED, actor=SYSTEM_ACTOR)
                    expired = True
                else:
                    await self._end_hold(session, effects, hold, state=HoldState.CONFIRMED, actor=user_id)
            out = _hold_out(hold)
        await self._publish(effects)
        if expired or out.state == HoldState.EXPIRED.value:
            raise errors.HoldExpired(f"Hold {hold_id} expired at {out.expires_at.isoformat()}")
        if out.state != HoldState.CONFIRMED.value:
            raise errors.HoldNotActive(f"Hold {hold_id} is {out.state}")
        return out

    async def release_hold(self, *, hold_id: str, user_id: str, is_admin: bool = False) -> HoldOut:
        """held -> available again; a released or expired hold answers its state, a confirmed one is refused."""
        effects = AfterCommit()
        async with self.sessions.begin() as session:
            hold = await self._locked_hold(session, hold_id, user_id, is_admin)
            if hold.state == HoldState.HELD.value:
                await self._end_hold(session, effects, hold, state=HoldState.RELEASED, actor=user_id)
            out = _hold_out(hold)
        await self._publish(effects)
        if out.state == HoldState.CONFIRMED.value:
            raise errors.HoldNotActive(f"Hold {hold_id} was confirmed")
        return out

    async def expire_due_holds(self) -> int:
        """Return the units of holds past their deadline; replicas share the work (SKIP LOCKED)."""
        effects = AfterCommit()
        async with self.sessions.begin() as session:
            due = (
                await session.scalars(
                    select(Hold)
                    .where(Hold.state == HoldState.HELD.value, Hold.expires_at <= utcnow())
                    .order_by(Hold.expires_at)
                    .limit(self.settings.sweep_batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            # SKU rows are locked in one order, so two sweepers never wait on each other in a cycle.
            for hold in sorted(due, key=lambda h: h.sku):
                await self._end_hold(session, effects, hold, state=HoldState.EXPIRED, actor=SYSTEM_ACTOR)
        await self._publish(effects)
        HOLDS_EXPIRED.inc(len(due))
        return len(due)

    # ---------------------------------------------------------------- reconciliation

    async def reconcile(self) -> Reconciliation:
        """Per SKU: do the counters add up, and do they match what the ledger says they must be?"""
        async with self.sessions() as session:
            rows = list(await session.scalars(select(Sku).order_by(Sku.sku)))
            sums: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            totals = await session.execute(
                select(LedgerEntry.sku, LedgerEntry.kind, func.sum(LedgerEntry.quantity)).group_by(
                    LedgerEntry.sku, LedgerEntry.kind
                )
            )
            for sku, kind, total in totals.all():
                sums[sku][kind] = int(total)
            last = dict(
                (
                    await session.execute(
                        select(LedgerEntry.sku, LedgerEntry.available_after).where(
                            LedgerEntry.id.in_(select(func.max(LedgerEntry.id)).group_by(LedgerEntry.sku))
                        )
                    )
                ).all()
            )
        try:
            mirrored = await self.mirror.read_many([r.sku for r in rows]) if rows else []
        except RedisError:
            mirrored = [None] * len(rows)
        report = [
            self._reconcile_one(row, sums[row.sku], last.get(row.sku), mirror)
            for row, mirror in zip(rows, mirrored, strict=True)
        ]
        drift = [d for r in report for d in r.drift]
        mirror_drift = [
            f"{r.sku}: Redis has {r.mirror_available}, PostgreSQL says {r.counters.available}"
            for r in report
            if r.mirror_available != r.counters.available
        ]
        return Reconciliation(ok=not drift, skus=report, drift=drift, mirror_drift=mirror_drift)

    async def repair_mirror(
        self, *, actor: str, before: Reconciliation | None = None, force: bool = True
    ) -> Reconciliation:
        """Rewrite the Redis copy of `available` from PostgreSQL for every SKU where it drifted (or was lost).

        `force=False` (the periodic job) leaves a copy that a change newer than PostgreSQL's read already wrote.
        """
        before = before or await self.reconcile()
        stale = [r.sku for r in before.skus if r.mirror_available != r.counters.available]
        if stale:
            async with self.sessions.begin() as session:
                rows = {r.sku: r for r in await session.scalars(select(Sku).where(Sku.sku.in_(stale)))}
                seqs = dict(
                    (
                        await session.execute(
                            select(LedgerEntry.sku, func.max(LedgerEntry.id))
                            .where(LedgerEntry.sku.in_(stale))
                            .group_by(LedgerEntry.sku)
                        )
                    ).all()
                )
                await self._audit(
                    session, actor=actor, action="repair_mirror", after={"skus": stale, "drift": before.mirror_drift}
                )
            for sku, row in rows.items():
                seq = int(seqs.get(sku) or 0)
                if force:
                    await self.mirror.overwrite(sku=sku, available=row.available, seq=seq)
                else:
                    await self.mirror.repair(sku=sku, available=row.available, seq=seq)
        return await self.reconcile()

    async def _leader(self, job: str, seconds: float) -> bool:
        """One replica runs a periodic job per tick (the jobs are safe to repeat; this only saves work)."""
        ms = max(int(seconds * 1000) - 50, 100)
        return bool(await self.redis.set(f"{JOB_LOCK_PREFIX}{job}", self.settings.consumer_name, nx=True, px=ms))

    async def release_leadership(self) -> None:
        """Give up the job locks this replica holds (shutdown), so another takes the next tick at once."""
        with contextlib.suppress(RedisError):
            await self.redis.eval(_RELEASE_LOCK, 1, f"{JOB_LOCK_PREFIX}reconcile", self.settings.consumer_name)

    async def reconcile_tick(self) -> int:
        """The periodic reconciliation: gauges, an error log per SKU that does not add up (for a human),
        and the drifted Redis mirror rewritten from PostgreSQL. Returns how many SKUs were checked."""
        try:
            leader = await self._leader("reconcile", self.settings.reconcile_interval_seconds)
        except RedisError:
            # PostgreSQL, the truth, is still worth checking with Redis gone; the mirror waits for Redis.
            leader, redis_up = True, False
        else:
            redis_up = True
        if not leader:
            return 0
        report = await self.reconcile()
        broken = [s for s in report.skus if s.drift]
        SKUS_OUT_OF_BALANCE.set(len(broken))
        for entry in broken:
            log.error("SKU %s does not reconcile (not repaired automatically): %s", entry.sku, "; ".join(entry.drift))
        if not redis_up:
            return len(report.skus)
        MIRROR_DRIFT.set(len(report.mirror_drift))
        if report.mirror_drift and self.settings.auto_repair_mirror:
            log.warning("rewriting the Redis mirror of %d SKUs: %s", len(report.mirror_drift), report.mirror_drift)
            repaired = await self.repair_mirror(actor=RECONCILER_ACTOR, before=report, force=False)
            MIRROR_DRIFT.set(len(repaired.mirror_drift))
        return len(report.skus)

    # ---------------------------------------------------------------- replenishment reminders

    async def replenishment(self, *, include_resolved: bool, sku: str | None, limit: int) -> list[ReminderOut]:
        """Replenishment reminders, newest first: open ones, or all with `include_resolved`."""
        r = ReplenishmentReminder
        query = select(r, Sku.available).join(Sku, Sku.sku == r.sku).order_by(r.id.desc()).limit(limit)
        if not include_resolved:
            query = query.where(r.resolved_at.is_(None))
        if sku is not None:
            query = query.where(r.sku == sku)
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [
            ReminderOut(
                id=reminder.id,
                sku=reminder.sku,
                suggested_quantity=reminder.suggested_quantity,
                available=available,
                created_at=reminder.created_at,
                last_reminded_at=reminder.last_reminded_at,
                reminders_sent=reminder.reminders_sent,
                resolved_at=reminder.resolved_at,
                resolved_by=reminder.resolved_by,
            )
            for reminder, available in rows
        ]

    def _reconcile_one(
        self, row: Sku, sums: dict[str, int], last_available: int | None, mirror: int | None
    ) -> SkuReconciliation:
        k = LedgerKind
        s = defaultdict(int, sums)
        from_ledger = Counters(
            on_hand=s[k.RESTOCK] + s[k.ADJUST],
            available=s[k.RESTOCK] + s[k.ADJUST] - s[k.ALLOCATE] + s[k.RETURN] - s[k.HOLD] + s[k.RELEASE],
            allocated=s[k.ALLOCATE] - s[k.RETURN] - s[k.SELL],
            held=s[k.HOLD] - s[k.RELEASE] - s[k.CONFIRM],
            sold=s[k.SELL] + s[k.CONFIRM],
        )
        counters = Counters(**_counters(row))
        drift = []
        if not counters.balanced:
            drift.append(f"{row.sku}: counters do not add up (on_hand {counters.on_hand})")
        if not from_ledger.balanced:
            drift.append(f"{row.sku}: ledger does not add up")
        for name, value in counters.model_dump().items():
            expected = getattr(from_ledger, name)
            if value != expected:
                drift.append(f"{row.sku}: {name} is {value}, the ledger says {expected}")
        if last_available is not None and last_available != counters.available:
            drift.append(
                f"{row.sku}: last ledger entry left available {last_available}, counters say {counters.available}"
            )
        return SkuReconciliation(
            sku=row.sku,
            counters=counters,
            from_ledger=from_ledger,
            counters_balanced=counters.balanced,
            ledger_balanced=from_ledger.balanced,
            last_ledger_available=last_available,
            mirror_available=mirror,
            drift=drift,
        )

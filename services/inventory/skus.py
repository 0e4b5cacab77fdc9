"""SKUs: creating them, restocks and count adjustments, low-stock thresholds (admin), the ledger they leave,
and the live availability storefronts read."""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.inventory import errors
from services.inventory.alerts import resolve_reminders, threshold_units
from services.inventory.ledger import AfterCommit, StockLedger, counters_of, utcnow
from services.inventory.models import LedgerEntry, LedgerKind, Sku
from services.inventory.schemas import Availability, LedgerOut, SkuCreate, SkuDetail, SkuOut

# Far above any real warehouse, far below what BIGINT holds: a runaway restock is refused, not overflowed.
MAX_ON_HAND = 10**15


def _check_threshold(value: int | None, kind: str) -> None:
    if value is not None and kind == "percent" and value > 100:
        raise errors.InvalidThreshold("A percent threshold must be between 0 and 100")


class Skus:
    """The SKU catalogue and its on-hand stock."""

    def __init__(self, ledger: StockLedger) -> None:
        self.ledger = ledger
        self.sessions = ledger.sessions

    async def create_sku(self, *, actor: str, data: SkuCreate) -> SkuOut:
        """Create a SKU; its initial stock is recorded as a restock."""
        _check_threshold(data.low_stock_threshold, data.threshold_kind)
        try:
            async with self.ledger.change() as change:
                if await change.session.get(Sku, data.sku) is not None:
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
                change.session.add(row)
                await change.session.flush()
                if data.initial_stock:
                    await change.record(
                        row,
                        kind=LedgerKind.RESTOCK,
                        quantity=data.initial_stock,
                        actor=actor,
                        reason="initial stock",
                        rearm=True,
                    )
                out = SkuOut.model_validate(row)
                change.audit(actor=actor, action="create_sku", sku=row.sku, after=out.model_dump(mode="json"))
        except IntegrityError:
            raise errors.SkuExists(f"SKU {data.sku} already exists") from None
        return out

    async def restock(self, *, actor: str, sku: str, quantity: int, reason: str) -> SkuOut:
        """Add received units to on-hand and available; lifting available above the threshold re-arms the alert."""
        return await self._change_on_hand(actor=actor, sku=sku, delta=quantity, reason=reason, kind=LedgerKind.RESTOCK)

    async def adjust(self, *, actor: str, sku: str, delta: int, reason: str) -> SkuOut:
        """Correct stock after a count: add units, or remove available ones (never below zero)."""
        return await self._change_on_hand(actor=actor, sku=sku, delta=delta, reason=reason, kind=LedgerKind.ADJUST)

    async def _change_on_hand(self, *, actor: str, sku: str, delta: int, reason: str, kind: LedgerKind) -> SkuOut:
        async with self.ledger.change() as change:
            row = await change.lock(sku)
            before = counters_of(row)
            if row.available + delta < 0:
                raise errors.InsufficientStock(
                    f"Only {row.available} available; cannot remove {-delta}", extra={"available": row.available}
                )
            if row.on_hand + delta > MAX_ON_HAND:
                raise errors.StockLimitExceeded(f"on_hand may not exceed {MAX_ON_HAND}")
            row.on_hand += delta
            row.available += delta
            await change.record(row, kind=kind, quantity=delta, actor=actor, reason=reason, rearm=delta > 0)
            out = SkuOut.model_validate(row)
            change.audit(actor=actor, action=kind.value, sku=sku, before=before, after=counters_of(row), note=reason)
        return out

    async def set_threshold(self, *, actor: str, sku: str, value: int | None, kind: str) -> SkuOut:
        """Set (or clear) the low-stock threshold; the alert is armed while available is above it."""
        _check_threshold(value, kind)
        async with self.ledger.change() as change:
            row = await change.lock(sku)
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
                after["resolved_reminders"] = await resolve_reminders(change.session, sku=sku, actor=actor, at=utcnow())
            change.audit(actor=actor, action="set_threshold", sku=sku, before=before, after=after)
            out = SkuOut.model_validate(row)
        return out

    async def sku_detail(self, sku: str) -> SkuDetail:
        """Counters and the most recent ledger entries."""
        async with self.sessions() as session:
            row = await session.get(Sku, sku)
            if row is None:
                raise errors.SkuNotFound(f"No SKU {sku}")
            entries = await _ledger(session, sku, limit=self.ledger.settings.recent_ledger_entries, before_id=None)
            return SkuDetail(**SkuOut.model_validate(row).model_dump(), ledger=entries)

    async def ledger_entries(self, *, sku: str, limit: int, before_id: int | None) -> list[LedgerOut]:
        """A SKU's ledger, newest first; page with `before_id`."""
        async with self.sessions() as session:
            if await session.get(Sku, sku) is None:
                raise errors.SkuNotFound(f"No SKU {sku}")
            return await _ledger(session, sku, limit=limit, before_id=before_id)

    async def availability(self, sku: str) -> Availability:
        """Available units from the Redis mirror; from PostgreSQL (and re-mirrored) when Redis has none."""
        try:
            mirrored = await self.ledger.mirror.read(sku)
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
            await self.ledger.publish(AfterCommit(mirrors={sku: (row.available, seq)}))
        return Availability(sku=sku, available=row.available)


async def _ledger(session: AsyncSession, sku: str, *, limit: int, before_id: int | None) -> list[LedgerOut]:
    query = select(LedgerEntry).where(LedgerEntry.sku == sku).order_by(LedgerEntry.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(LedgerEntry.id < before_id)
    return [LedgerOut.model_validate(e) for e in await session.scalars(query)]

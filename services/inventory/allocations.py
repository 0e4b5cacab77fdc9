"""Allocations of warehouse stock to sales (admin): units a sale takes from available, and what it later
reports sold or gives back."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.inventory import errors
from services.inventory.ledger import StockChange, StockLedger, counters_of, require_available
from services.inventory.models import Allocation, LedgerKind, Sku
from services.inventory.schemas import AllocationOut


def _allocation_out(a: Allocation) -> AllocationOut:
    return AllocationOut(
        sale_id=a.sale_id,
        sku=a.sku,
        allocated=a.allocated,
        returned=a.returned,
        sold=a.sold,
        outstanding=a.allocated - a.returned - a.sold,
    )


async def _locked(session: AsyncSession, sale_id: int, sku: str, *, create: bool = False) -> Allocation:
    """A sale's allocation of a SKU, locked; an empty one when `create` and there is none yet."""
    allocation = await session.get(Allocation, (sale_id, sku), with_for_update=True)
    if allocation is None:
        if not create:
            raise errors.AllocationNotFound(f"Sale {sale_id} has no allocation of {sku}")
        allocation = Allocation(sale_id=sale_id, sku=sku, allocated=0, returned=0, sold=0)
        session.add(allocation)
    return allocation


def _check_outstanding(allocation: Allocation, quantity: int) -> None:
    outstanding = allocation.allocated - allocation.returned - allocation.sold
    if quantity > outstanding:
        raise errors.AllocationExceeded(
            f"Sale {allocation.sale_id} still holds {outstanding} of {allocation.sku}; {quantity} asked",
            extra={"outstanding": outstanding},
        )


def _audit(change: StockChange, row: Sku, before: dict[str, int], *, actor: str, action: str, note: str) -> None:
    change.audit(actor=actor, action=action, sku=row.sku, before=before, after=counters_of(row), note=note)


class Allocations:
    """What each sale holds of each SKU, kept in step with the SKU's counters and ledger."""

    def __init__(self, ledger: StockLedger) -> None:
        self.ledger = ledger
        self.sessions = ledger.sessions

    async def allocate(self, *, actor: str, sale_id: int, sku: str, quantity: int) -> AllocationOut:
        """Move available units to a sale; refused (nothing changed) when fewer are available."""
        async with self.ledger.change() as change:
            row = await change.lock(sku)
            require_available(row, quantity)
            before = counters_of(row)
            allocation = await _locked(change.session, sale_id, sku, create=True)
            allocation.allocated += quantity
            row.available -= quantity
            row.allocated += quantity
            await change.record(row, kind=LedgerKind.ALLOCATE, quantity=quantity, actor=actor, ref=str(sale_id))
            _audit(change, row, before, actor=actor, action="allocate", note=f"sale {sale_id}")
            out = _allocation_out(allocation)
        return out

    async def return_allocation(self, *, actor: str, sale_id: int, sku: str, quantity: int) -> AllocationOut:
        """Give a sale's unsold units back to available."""
        return await self._settle(actor=actor, sale_id=sale_id, sku=sku, quantity=quantity, kind=LedgerKind.RETURN)

    async def sell_allocation(self, *, actor: str, sale_id: int, sku: str, quantity: int) -> AllocationOut:
        """Record units a sale sold out of its allocation."""
        return await self._settle(actor=actor, sale_id=sale_id, sku=sku, quantity=quantity, kind=LedgerKind.SELL)

    async def _settle(self, *, actor: str, sale_id: int, sku: str, quantity: int, kind: LedgerKind) -> AllocationOut:
        """Close part of a sale's allocation: returned units go back to available, sold ones to sold."""
        async with self.ledger.change() as change:
            row = await change.lock(sku)
            allocation = await _locked(change.session, sale_id, sku)
            _check_outstanding(allocation, quantity)
            before = counters_of(row)
            row.allocated -= quantity
            if kind == LedgerKind.RETURN:
                allocation.returned += quantity
                row.available += quantity
            else:
                allocation.sold += quantity
                row.sold += quantity
            await change.record(row, kind=kind, quantity=quantity, actor=actor, ref=str(sale_id))
            _audit(change, row, before, actor=actor, action=kind.value, note=f"sale {sale_id}")
            out = _allocation_out(allocation)
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
        async with self.ledger.change() as change:
            row = await change.lock(sku)
            before = counters_of(row)
            allocation = await _locked(change.session, sale_id, sku, create=True)
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
                    await change.record(row, kind=kind, quantity=quantity, actor=actor, ref=str(sale_id))
            if any(quantity > 0 for _kind, quantity in moves):
                note = f"sale {sale_id}: allocated {allocated}, sold {sold_now}, returned {returned_now}"
                _audit(change, row, before, actor=actor, action="set_allocation", note=note)
            out = _allocation_out(allocation)
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

"""Ops' sales: create, edit and restock a sale, read the record, its stats and the audit log.

The lifecycle's admin transitions (schedule, start, pause, resume, stop) are in lifecycle.py; what the
system does on its own (the window opening and closing) is in schedule.py.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select

from services.flashsale import errors
from services.flashsale.core import (
    WARM_STATES,
    SaleCore,
    effective_state,
    from_epoch_ms,
    snapshot,
    threshold_units,
    utcnow,
)
from services.flashsale.models import AuditEntry, Sale, SaleState
from services.flashsale.purchase import Purchases
from services.flashsale.schemas import MAX_QUANTITY, SaleCreate, SaleStats, SaleUpdate

log = logging.getLogger("flashsale.sales")

ATTEMPT_OUTCOMES = ("ok", "sold_out", "limit", "insufficient", "not_live", "rate_limited")


class Sales:
    """The admin flows over a sale's record (audited), and the reads ops make of it."""

    def __init__(self, core: SaleCore, purchases: Purchases) -> None:
        self.core = core
        self.purchases = purchases

    async def audit_read(self, *, actor: str, action: str, sale_id: int | None = None) -> None:
        """Record an admin read (who looked at what, when)."""
        async with self.core.sessions.begin() as session:
            await self.core.audit(session, actor=actor, action=action, sale_id=sale_id)

    async def create_sale(self, *, actor: str, data: SaleCreate) -> dict[str, Any]:
        """Create a sale in draft."""
        core = self.core
        allocated: tuple[int, str] | None = None
        try:
            async with core.sessions.begin() as session:
                sale = Sale(**data.model_dump(), state=SaleState.DRAFT.value)
                session.add(sale)
                await session.flush()
                await session.refresh(sale)
                allocated = (sale.id, sale.sku)
                await core.allocate(sale)
                after = snapshot(sale)
                await core.audit(session, actor=actor, action="create", sale_id=sale.id, after=after)
        except BaseException as exc:
            # A refusal by the warehouse changed nothing; anything else after the call (an unanswered call
            # included: it may have been applied) may have left stock allocated to a sale that never exists.
            if allocated is not None and core.inventory is not None and not isinstance(exc, errors.DependencyRefused):
                await self._release_unborn_allocation(*allocated)
            raise
        core.remember(sale)
        await core.notify("catalog")
        return after

    async def _release_unborn_allocation(self, sale_id: int, sku: str) -> None:
        """Give back the warehouse stock allocated to a sale whose creation did not commit.

        Sale ids come from a sequence and are never reused, so nothing else can ever settle that allocation:
        left alone, its units would stay out of the warehouse's available stock for good. Released only when
        the sale row is known to be absent (a COMMIT whose answer was lost may have succeeded)."""
        inventory = self.core.inventory
        assert inventory is not None
        try:
            async with self.core.sessions() as session:
                exists = await session.scalar(select(Sale.id).where(Sale.id == sale_id))
        except Exception as exc:  # the database is unreachable: whether the sale exists cannot be told
            log.error("sale %s: creation failed and its allocation of %s is kept (%s)", sale_id, sku, exc)
            return
        if exists is not None:
            return
        try:
            await inventory.set_allocation(sale_id=sale_id, sku=sku, allocated=0)
            log.warning("sale %s was not created: its allocation of %s went back to the warehouse", sale_id, sku)
        except Exception as exc:
            log.error("sale %s was not created and its allocation of %s could not be released: %s", sale_id, sku, exc)

    async def update_sale(self, *, actor: str, sale_id: int, data: SaleUpdate) -> dict[str, Any]:
        """Edit a sale that has not gone live yet."""
        changes = data.model_dump(exclude_unset=True)
        if not changes:
            raise errors.InvalidSale("Nothing to update")
        if any(v is None for v in changes.values()):
            raise errors.InvalidSale("Fields cannot be set to null")
        core = self.core
        async with core.sessions.begin() as session:
            sale = await core.locked(session, sale_id)
            state = await core.current_state(sale)
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
                await core.allocate(sale)
            if sale.state == SaleState.SCHEDULED.value:
                await core.warm(sale, reset=True)
            await session.flush()
            await session.refresh(sale)
            after = snapshot(sale)
            await core.audit(session, actor=actor, action="update", sale_id=sale_id, before=before, after=after)
        core.remember(sale)
        await core.notify("catalog")
        return after

    async def add_stock(self, *, actor: str, sale_id: int, units: int) -> dict[str, Any]:
        """Add units to a sale (draft, scheduled, live or paused).

        The record is committed first, then Redis gets the units once (keyed by the audit entry): if
        Redis fails in between, live stock is short of the record (undersell, repaired by reconciliation),
        never ahead of it.
        """
        core = self.core
        async with core.sessions.begin() as session:
            sale = await core.locked(session, sale_id)
            if sale.state == SaleState.ENDED.value:
                raise errors.InvalidTransition("Cannot add stock to an ended sale")
            if sale.quantity + units > MAX_QUANTITY:
                raise errors.InvalidSale(f"A sale holds at most {MAX_QUANTITY} units")
            before = snapshot(sale)
            sale.quantity += units
            await core.allocate(sale)
            await session.flush()
            await session.refresh(sale)
            after = snapshot(sale)
            entry = await core.audit(
                session, actor=actor, action="add_stock", sale_id=sale_id, before=before, after=after
            )
            await session.flush()
            operation = str(entry.id)
        if sale.state in WARM_STATES:
            threshold = threshold_units(sale.quantity, sale.low_stock_threshold_pct)
            try:
                outcome = await core.store.add_stock(
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
        core.sold_out.clear(sale.id)
        core.remember(sale)
        await core.notify(f"buyable:{sale.id}")
        await core.notify("catalog")
        return after

    async def list_sales(self, *, state: SaleState | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """Sales for ops, newest first."""
        async with self.core.sessions() as session:
            query = select(Sale).order_by(Sale.id.desc()).limit(limit).offset(offset)
            if state is not None:
                query = query.where(Sale.state == state.value)
            return [snapshot(s) for s in (await session.scalars(query)).all()]

    async def get_sale(self, sale_id: int) -> Sale:
        """One sale from the record."""
        async with self.core.sessions() as session:
            sale = await session.get(Sale, sale_id)
        if sale is None:
            raise errors.SaleNotFound(f"No sale {sale_id}")
        return sale

    async def stats(self, sale_id: int) -> SaleStats:
        """Sold, reserved, remaining, attempts by outcome, when it sold out."""
        sale = await self.get_sale(sale_id)
        await self.purchases.flush_local_attempts()
        c = await self.core.store.counters(sale_id)
        state = effective_state(SaleState(sale.state), c.get("state"), sale.starts_at, sale.ends_at, utcnow())
        return SaleStats(
            sale_id=sale_id,
            state=state.value,
            quantity=int(c.get("quantity", sale.quantity)),
            remaining=int(c.get("remaining", sale.quantity)),
            reserved=int(c.get("reserved", 0)),
            sold=int(c.get("sold", 0)),
            released=int(c.get("released", 0)),
            returned=int(c.get("returned", sale.returned_units)),
            attempts={name: int(c.get(f"n_{name}", 0)) for name in ATTEMPT_OUTCOMES},
            sold_out_at=from_epoch_ms(c.get("sold_out_at")),
            first_sold_out_at=from_epoch_ms(c.get("first_sold_out_at")),
        )

    async def audit_log(self, *, sale_id: int | None, limit: int, offset: int) -> list[AuditEntry]:
        """Audited admin actions, newest first."""
        async with self.core.sessions() as session:
            query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
            if sale_id is not None:
                query = query.where(AuditEntry.sale_id == sale_id)
            return list((await session.scalars(query)).all())

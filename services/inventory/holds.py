"""Holds for regular checkout: units set aside with a deadline, then confirmed (sold), released, or returned
to stock by the sweeper once the deadline passed."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.idempotency import IdempotencyStore, fingerprint
from services.inventory import errors
from services.inventory.ledger import StockChange, StockLedger, require_available, utcnow
from services.inventory.models import Hold, HoldState, LedgerKind
from services.inventory.schemas import HoldOut

HOLDS_EXPIRED = Counter("inventory_holds_expired_total", "Holds whose units went back to stock on their own")
SYSTEM_ACTOR = "system:hold-sweeper"


def _hold_out(hold: Hold) -> HoldOut:
    return HoldOut(hold_id=hold.id, sku=hold.sku, quantity=hold.quantity, state=hold.state, expires_at=hold.expires_at)


async def _locked_hold(session: AsyncSession, hold_id: str, user_id: str, is_admin: bool) -> Hold:
    """The hold, locked; another user's hold is answered as missing (only an admin may act on it)."""
    hold = await session.get(Hold, hold_id, with_for_update=True)
    if hold is None or (hold.user_id != user_id and not is_admin):
        raise errors.HoldNotFound(f"No hold {hold_id}")
    return hold


async def _end_hold(change: StockChange, hold: Hold, *, state: HoldState, actor: str) -> None:
    """Move a held hold's units to sold (confirmed) or back to available (released, expired)."""
    row = await change.lock(hold.sku)
    row.held -= hold.quantity
    if state is HoldState.CONFIRMED:
        row.sold += hold.quantity
        kind, reason = LedgerKind.CONFIRM, None
    else:
        row.available += hold.quantity
        kind, reason = LedgerKind.RELEASE, state.value
    hold.state = state.value
    await change.record(row, kind=kind, quantity=hold.quantity, actor=actor, ref=hold.id, reason=reason)


class Holds:
    """Checkout holds: each one a ledger move from available to held, and from held to sold or back."""

    def __init__(self, ledger: StockLedger) -> None:
        self.ledger = ledger
        self.settings = ledger.settings
        self.hold_keys = IdempotencyStore(ledger.redis, "inventory-holds")

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
        async with self.ledger.change() as change:
            row = await change.lock(sku)
            require_available(row, quantity)
            hold = Hold(
                id=os.urandom(16).hex(),
                sku=sku,
                quantity=quantity,
                user_id=user_id,
                state=HoldState.HELD.value,
                expires_at=utcnow() + timedelta(seconds=ttl_seconds),
            )
            change.session.add(hold)
            row.available -= quantity
            row.held += quantity
            await change.record(row, kind=LedgerKind.HOLD, quantity=quantity, actor=user_id, ref=hold.id)
            out = _hold_out(hold)
        return out

    async def confirm_hold(self, *, hold_id: str, user_id: str, is_admin: bool = False) -> HoldOut:
        """held -> sold. Confirming twice answers the same; a hold past its deadline cannot be confirmed."""
        expired = False
        async with self.ledger.change() as change:
            hold = await _locked_hold(change.session, hold_id, user_id, is_admin)
            if hold.state == HoldState.HELD.value:
                if hold.expires_at <= utcnow():
                    await _end_hold(change, hold, state=HoldState.EXPIRED, actor=SYSTEM_ACTOR)
                    expired = True
                else:
                    await _end_hold(change, hold, state=HoldState.CONFIRMED, actor=user_id)
            out = _hold_out(hold)
        if expired or out.state == HoldState.EXPIRED.value:
            raise errors.HoldExpired(f"Hold {hold_id} expired at {out.expires_at.isoformat()}")
        if out.state != HoldState.CONFIRMED.value:
            raise errors.HoldNotActive(f"Hold {hold_id} is {out.state}")
        return out

    async def release_hold(self, *, hold_id: str, user_id: str, is_admin: bool = False) -> HoldOut:
        """held -> available again; a released or expired hold answers its state, a confirmed one is refused."""
        async with self.ledger.change() as change:
            hold = await _locked_hold(change.session, hold_id, user_id, is_admin)
            if hold.state == HoldState.HELD.value:
                await _end_hold(change, hold, state=HoldState.RELEASED, actor=user_id)
            out = _hold_out(hold)
        if out.state == HoldState.CONFIRMED.value:
            raise errors.HoldNotActive(f"Hold {hold_id} was confirmed")
        return out

    async def expire_due_holds(self) -> int:
        """Return the units of holds past their deadline; replicas share the work (SKIP LOCKED)."""
        async with self.ledger.change() as change:
            due = (
                await change.session.scalars(
                    select(Hold)
                    .where(Hold.state == HoldState.HELD.value, Hold.expires_at <= utcnow())
                    .order_by(Hold.expires_at)
                    .limit(self.settings.sweep_batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            # SKU rows are locked in one order, so two sweepers never wait on each other in a cycle.
            for hold in sorted(due, key=lambda h: h.sku):
                await _end_hold(change, hold, state=HoldState.EXPIRED, actor=SYSTEM_ACTOR)
        HOLDS_EXPIRED.inc(len(due))
        return len(due)

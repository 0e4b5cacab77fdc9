"""Replenishment reminders as ops read them: SKUs that crossed their low-stock threshold and wait for a
restock. They are opened and resolved inside stock changes (`services.inventory.ledger`) and repeated by
the alert relay (`services.inventory.alerts`); this is the admin listing."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.inventory.models import ReplenishmentReminder, Sku
from services.inventory.schemas import ReminderOut


class Replenishment:
    """The open (and, on request, resolved) replenishment reminders with each SKU's current stock."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def reminders(self, *, include_resolved: bool, sku: str | None, limit: int) -> list[ReminderOut]:
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

"""The transitions nobody asks for: a sale's window opening and closing, and recording the pause the
purchase script made on its own (low-stock policy alert_and_pause). Each is audited as the system's."""

from __future__ import annotations

from sqlalchemy import select

from services.flashsale.core import SYSTEM_ACTOR, WARM_STATES, SaleCore, snapshot, utcnow
from services.flashsale.models import Sale, SaleState


class AutomaticTransitions:
    """The scheduler's tick and the auto-pause record; safe to run on every replica at once."""

    def __init__(self, core: SaleCore) -> None:
        self.core = core

    async def run_schedule_tick(self) -> int:
        """Start sales whose window opened and end those whose window closed; safe on every replica."""
        core = self.core
        moved = 0
        now = utcnow()
        async with core.sessions.begin() as session:
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
                    await core.store.set_state(sale.id, sale.state)
                else:
                    # Compare-and-set: the purchase script may already have paused it (alert_and_pause).
                    held = await core.store.advance_state(
                        sale.id, expected=SaleState.SCHEDULED.value, new=SaleState.LIVE.value
                    )
                    paused = held == SaleState.PAUSED.value
                    sale.state = SaleState.PAUSED.value if paused else SaleState.LIVE.value
                    sale.went_live_at = sale.went_live_at or now
                    action = "auto_start_paused" if paused else "auto_start"
                await session.flush()
                await session.refresh(sale)
                await core.audit(
                    session,
                    actor=SYSTEM_ACTOR,
                    action=action,
                    sale_id=sale.id,
                    before=before,
                    after=snapshot(sale),
                )
                core.remember(sale)
                moved += 1
        if moved:
            await core.notify("catalog")
        return moved

    async def sync_auto_pause(self, sale_id: int) -> None:
        """Record a pause the purchase script made on its own (alert_and_pause)."""
        core = self.core
        async with core.sessions.begin() as session:
            sale = await core.locked(session, sale_id)
            if sale.state not in (SaleState.LIVE.value, SaleState.SCHEDULED.value):
                return
            if (await core.store.live_status(sale_id)).get("state") != SaleState.PAUSED.value:
                return  # an admin resumed it before this caught up
            before = snapshot(sale)
            sale.state = SaleState.PAUSED.value
            sale.went_live_at = sale.went_live_at or utcnow()
            await session.flush()
            await session.refresh(sale)
            await core.audit(
                session,
                actor=SYSTEM_ACTOR,
                action="auto_pause",
                sale_id=sale_id,
                before=before,
                after=snapshot(sale),
                note="low-stock threshold crossed with policy alert_and_pause",
            )
        core.remember(sale)
        await core.notify("catalog")

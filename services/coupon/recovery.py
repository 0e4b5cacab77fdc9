"""After Redis lost data: claim counters rebuilt from the wallets, locked coupons settled from the order record.

PostgreSQL is the record: the wallets hold every claim, and the order service's orders say which were paid.
Redis keeps the claim counters for speed, and the order events that make locked coupons used (or free
them) travel through a Redis stream; a Redis crash can lose either (up to a second with AOF everysec, all
of it without persistence). Each replica looks every `COUPON_RESTORE_INTERVAL_SECONDS`:
- a template whose counters are gone is rebuilt from the wallets (claims answer 404 until then);
- after a restart (a new Redis run id, or the recorded one lost), claims the wallets hold but Redis forgot
  are counted again, and every coupon locked before then is settled from its order's record, since the
  event that would have used or freed it may be gone;
- and, every `COUPON_STALE_LOCK_SWEEP_SECONDS`, coupons locked for longer than any order stays unpaid are
  settled the same way, whatever lost their event.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import func, select, tuple_

from services.common.contracts import EventType
from services.coupon.models import Coupon, CouponState, Template
from services.coupon.orders import order_records
from services.coupon.service import CouponService, utcnow

log = logging.getLogger("coupon.recovery")

# The event an order's recorded state stands for, as the coupon service handles it: a paid order uses its
# coupons (a refund keeps them used), a closed one frees them (refund_pending: it expired before it was paid).
EVENT_OF_ORDER_STATE = {
    "paid": EventType.ORDER_PAID,
    "fulfilled": EventType.ORDER_PAID,
    "refunded": EventType.ORDER_PAID,
    "cancelled": EventType.ORDER_CANCELLED,
    "expired": EventType.ORDER_EXPIRED,
    "refund_pending": EventType.ORDER_EXPIRED,
}
LEASE_SECONDS = 60
LOCK_PAGE = 200


class RedisRecovery:
    """Finds what Redis lost and rebuilds it from the record; safe to run on every replica at once."""

    def __init__(self, service: CouponService, holder: str) -> None:
        self.service = service
        self.store = service.store
        self.holder = holder

    async def run(self) -> None:
        """One check: lost templates, a restarted Redis, then any locks waiting to be settled."""
        await self.restore_lost_templates()
        await self.recover_from_restart()
        locked_before = await self.store.locks_to_settle()
        if locked_before is not None:
            await self.settle_locked_coupons(locked_before=datetime.fromisoformat(locked_before))
            await self.store.locks_settled(locked_before)

    async def sweep_stale_locks(self) -> int:
        """Settle coupons locked for longer than any order stays unpaid; how many changed."""
        return await self.settle_locked_coupons(
            locked_before=utcnow() - timedelta(seconds=self.service.settings.stale_lock_after_seconds)
        )

    async def _open_templates(self) -> list[Template]:
        # A template whose claim window closed cannot be claimed either way: only open ones are checked.
        open_now = Template.valid_until.is_(None) | (Template.valid_until > utcnow())
        async with self.service.sessions() as session:
            return list((await session.scalars(select(Template).where(open_now))).all())

    async def _held(self, template_id: int) -> dict[str, int]:
        async with self.service.sessions() as session:
            rows = (
                await session.execute(
                    select(Coupon.user_id, func.count())
                    .where(Coupon.template_id == template_id)
                    .group_by(Coupon.user_id)
                )
            ).all()
        return {str(user): int(n) for user, n in rows}

    async def restore_lost_templates(self) -> int:
        """Rebuild the claim counters of templates Redis lost (a crash without persistence) from the wallets.

        Until then their claims answer 404; afterwards the total and per-user limits count every coupon the
        record holds. Claims Redis accepted but had not yet streamed to the record are lost with it.
        """
        templates = await self._open_templates()
        if not templates:
            return 0
        lost = set(await self.store.missing([t.id for t in templates]))
        restored = 0
        for template in (t for t in templates if t.id in lost):
            held = await self._held(template.id)
            if await self.store.restore_template(
                template_id=template.id,
                config=self.service.claim_config(template),
                claimed=sum(held.values()),
                held=held,
            ):
                restored += 1
                log.error(
                    "template %s: claim counters were missing in Redis; rebuilt from %d recorded coupons",
                    template.id,
                    sum(held.values()),
                )
        return restored

    async def recover_from_restart(self) -> bool:
        """After a Redis restart: count lost claims again and ask for locked coupons to be settled.

        True when this replica did it (another one may hold the lease, or Redis did not restart).
        """
        run_id = await self.store.run_id()
        if await self.store.recovered_run_id() == run_id:
            return False
        if not await self.store.take_recovery_lease(self.holder, LEASE_SECONDS):
            return False
        try:
            noticed = utcnow()
            counted = 0
            for template in await self._open_templates():
                counted += await self.count_lost_claims(template.id)
            await self.store.finish_recovery(run_id, settle_locked_before=noticed.isoformat())
        finally:
            await self.store.give_back_recovery_lease()
        log.warning("Redis restarted (run %s): %d lost claims counted again; locked coupons to settle", run_id, counted)
        return True

    async def count_lost_claims(self, template_id: int) -> int:
        """Count again the claims of a template that the wallets hold and Redis forgot; how many.

        The wallets are read before the claim stream: a claim reaches Redis (counter and stream in one
        script) before its wallet row, so any recorded claim missing from the stream read afterwards is
        one Redis lost, never one in flight.
        """
        restored_at = await self.store.restored_at_ms(template_id)
        query = select(Coupon.id, Coupon.user_id, Coupon.claimed_at).where(Coupon.template_id == template_id)
        if restored_at is not None:  # the stream starts at the last rebuild; earlier claims were counted by it
            query = query.where(Coupon.claimed_at > datetime.fromtimestamp(restored_at / 1000, tz=utcnow().tzinfo))
        async with self.service.sessions() as session:
            recorded = (await session.execute(query)).all()
        if not recorded:
            return 0
        streamed = await self.store.streamed_coupons(template_id)
        lost = [
            (str(cid), str(user), int(at.timestamp() * 1000)) for cid, user, at in recorded if str(cid) not in streamed
        ]
        if not lost:
            return 0
        counted = await self.store.count_again(template_id=template_id, claims=lost)
        log.error("template %s: %d claims Redis lost were counted again from the wallets", template_id, counted)
        return counted

    async def settle_locked_coupons(self, *, locked_before: datetime) -> int:
        """Use or free coupons locked before a time as their orders' records say; how many changed.

        Orders still awaiting payment keep their coupons locked (their events are still to come). Raises
        httpx.HTTPError when the order service does not answer; the next run tries again.
        """
        changed = 0
        after: tuple[datetime, str] | None = None
        while True:
            query = (
                select(Coupon.id, Coupon.order_id, Coupon.locked_at)
                .where(Coupon.state == CouponState.LOCKED.value, Coupon.locked_at <= locked_before)
                .order_by(Coupon.locked_at, Coupon.id)
                .limit(LOCK_PAGE)
            )
            if after is not None:
                query = query.where(tuple_(Coupon.locked_at, Coupon.id) > tuple_(*after))
            async with self.service.sessions() as session:
                page = (await session.execute(query)).all()
            if not page:
                if changed:
                    log.warning("%d locked coupons settled from the order record", changed)
                return changed
            after = (page[-1].locked_at, page[-1].id)
            orders = await order_records(self.service.settings, [str(r.order_id) for r in page if r.order_id])
            for order in orders.values():
                event = EVENT_OF_ORDER_STATE.get(order.state)
                if event is not None:
                    changed += await self.service.on_order_event(
                        {"type": event, "order_id": order.order_id, "user_id": order.user_id}
                    )

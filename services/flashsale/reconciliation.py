"""Per-sale reconciliation and the warehouse settlement.

During a sale Redis is the gate and PostgreSQL the record. For every sale:

    quantity = remaining + reserved_unpaid + paid + returned

`remaining` comes from Redis, `reserved_unpaid` and `paid` from the order record (plus reservations
Redis accepted whose order is not created yet: in flight), `returned` is what went back to the
warehouse after the sale ended. The report says where it does not hold; repair mode rebuilds the Redis
counters from the record (rebuild.lua). The settlement reports sold and returned units to the inventory
service, so the warehouse ledger follows the sale.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Gauge
from redis.exceptions import RedisError
from sqlalchemy import select, update

from services.common.contracts import ConsumerGroup, EventType, encode_event, purchase_stream, sale_alert_stream
from services.common.contracts.events import ReconciliationDrift
from services.common.streams import trim_acknowledged
from services.flashsale import errors
from services.flashsale.core import SYSTEM_ACTOR, WARM_STATES, epoch_ms, utcnow
from services.flashsale.models import LowStockPolicy, Sale, SaleState
from services.flashsale.schemas import (
    AllocationView,
    OrderUnits,
    RebuildView,
    RedisCounters,
    SaleReconciliation,
)
from services.flashsale.service import FlashSaleService
from services.flashsale.store import ORPHANS_KEY, job_lock_key

log = logging.getLogger("flashsale.reconciliation")

DRIFT = Gauge(
    "flashsale_reconciliation_drift_units",
    "Units by which remaining + reserved + paid + returned exceeds (>0) or falls short of (<0) a sale's quantity",
    ["sale_id"],
)
UNSETTLED = Gauge("flashsale_unsettled_sales", "Sales whose units are not all sold or returned to the warehouse yet")
# How often an ended sale with Redis showing nothing reserved asks the order record whether it may settle.
RECORD_CHECK_SECONDS = 5.0
# The consumer groups that must have read a purchase stream before its entries may be trimmed.
PURCHASE_STREAM_GROUPS = (ConsumerGroup.ORDER,)


class SaleReconciler:
    """Reconciliation reports, the Redis rebuild, and the settlement with the warehouse."""

    def __init__(self, service: FlashSaleService) -> None:
        self.core = service.core
        self.sales = service.sales
        self.automatic = service.automatic
        self.store = service.core.store
        self.settings = service.core.settings
        # (allocated, sold, returned) last reported to the warehouse per sale: unchanged totals are not resent.
        self._reported: dict[int, tuple[int, int, int]] = {}
        # When an ended sale's order record may be asked again whether any order is still open.
        self._next_record_check: dict[int, float] = {}

    async def _leader(self, job: str, seconds: float) -> bool:
        """One replica runs a periodic job per tick (the jobs are idempotent; this only saves work)."""
        ms = max(int(seconds * 1000) - 50, 100)
        return bool(await self.store.redis.set(job_lock_key(job), self.settings.consumer_name, nx=True, px=ms))

    # ---------------------------------------------------------------- the report

    async def report(self, sale_id: int) -> SaleReconciliation:
        """Check one sale; nothing is changed."""
        sale = await self.sales.get_sale(sale_id)
        return await self._report(sale)

    async def _report(self, sale: Sale) -> SaleReconciliation:
        counters = await self.store.counters(sale.id)
        redis = (
            RedisCounters(
                state=counters.get("state", ""),
                quantity=int(counters.get("quantity", 0)),
                remaining=int(counters["remaining"]),
                reserved=int(counters.get("reserved", 0)),
                sold=int(counters.get("sold", 0)),
                returned=int(counters.get("returned", 0)),
            )
            if "remaining" in counters
            else None
        )
        problems: list[str] = []
        orders: OrderUnits | None = None
        in_flight = 0
        if self.core.orders is not None and sale.state != SaleState.DRAFT.value:
            record, in_flight = await self._record(sale.id)
            orders = OrderUnits(
                reserved=int(record["reserved_units"]),
                sold=int(record["sold_units"]),
                released=int(record["released_units"]),
            )
        returned = max(sale.returned_units, redis.returned if redis else 0)
        if sale.state == SaleState.DRAFT.value:
            remaining, reserved_unpaid, paid = sale.quantity, 0, 0  # not loaded into Redis yet
        elif redis is None:
            problems.append("Redis holds no data for this sale (Redis lost data?): purchases are refused until repair")
            remaining = 0
            reserved_unpaid = orders.reserved if orders else 0
            paid = orders.sold if orders else 0
        else:
            remaining = redis.remaining
            if orders is not None:
                reserved_unpaid, paid = orders.reserved + in_flight, orders.sold
            else:
                problems.append("The order record was not consulted (no FLASHSALE_ORDER_URL): Redis counters only")
                reserved_unpaid, paid = redis.reserved, redis.sold
        drift = remaining + reserved_unpaid + paid + returned - sale.quantity
        if drift > 0:
            problems.append(f"Redis could sell {drift} unit(s) more than the sale has: repair, or check by hand")
        elif drift < 0 and redis is not None:
            problems.append(
                f"{-drift} unit(s) are neither sellable nor in an order (an order event in transit, "
                "or units lost to a failure): repair gives them back if it persists"
            )
        allocation: AllocationView | None = None
        if self.core.inventory is not None:
            record_alloc = await self.core.inventory.allocation(sale_id=sale.id, sku=sale.sku)
            if record_alloc is None:
                problems.append(f"The warehouse has no allocation of {sale.sku} for this sale")
            else:
                allocation = AllocationView(
                    allocated=int(record_alloc["allocated"]),
                    sold=int(record_alloc["sold"]),
                    returned=int(record_alloc["returned"]),
                )
                if allocation.allocated != sale.quantity:
                    problems.append(
                        f"The warehouse allocated {allocation.allocated} unit(s), the sale has {sale.quantity} "
                        "(the settlement job corrects it)"
                    )
        return SaleReconciliation(
            sale_id=sale.id,
            sku=sale.sku,
            state=sale.state,
            checked_at=utcnow(),
            quantity=sale.quantity,
            remaining=remaining,
            reserved_unpaid=reserved_unpaid,
            paid=paid,
            returned=returned,
            in_flight=in_flight,
            drift=drift,
            balanced=drift == 0 and (redis is not None or sale.state == SaleState.DRAFT.value),
            redis=redis,
            orders=orders,
            allocation=allocation,
            problems=problems,
        )

    async def _record(self, sale_id: int) -> tuple[dict[str, Any], int]:
        """The order record of a sale, and the units Redis reserved whose order is not created yet (in flight)."""
        assert self.core.orders is not None
        record = await self.core.orders.sale_reservations(sale_id)
        known = {r["reservation_id"] for r in record["reservations"]}
        held = await self.store.reservations(sale_id)
        in_flight = sum(q for rid, (_u, q, st) in held.items() if st == "reserved" and rid not in known)
        return record, in_flight

    async def _unsettled(self, limit: int) -> list[Sale]:
        """Sales not settled yet (draft, warm, or ended with units still to settle), oldest first."""
        async with self.core.sessions() as session:
            query = select(Sale).where(Sale.settled_at.is_(None)).order_by(Sale.id).limit(limit)
            return list((await session.scalars(query)).all())

    async def report_all(self) -> list[SaleReconciliation]:
        """Every sale not settled yet (warm, or ended with units still to settle)."""
        return [await self._report(sale) for sale in await self._unsettled(500)]

    # ---------------------------------------------------------------- repair

    async def repair(self, sale_id: int, *, actor: str) -> SaleReconciliation:
        """Rebuild the sale's Redis counters from the order record; audited."""
        if self.core.orders is None:
            raise errors.ReconciliationUnavailable("Repair needs the order record: set FLASHSALE_ORDER_URL")
        sale = await self.sales.get_sale(sale_id)
        if sale.state == SaleState.DRAFT.value:
            raise errors.InvalidTransition("A draft sale has nothing in Redis to repair")
        before = await self._report(sale)
        record = await self.core.orders.sale_reservations(sale_id)
        known = [(r["reservation_id"], r["user_id"], int(r["quantity"]), r["stock"]) for r in record["reservations"]]
        config = self.core.redis_config(sale)
        current_state = (await self.store.live_status(sale_id)).get("state")
        if current_state and sale.state != SaleState.ENDED.value:
            config.pop("state")  # keep what Redis says (the purchase script may have paused it)
        outcome = await self.store.rebuild(
            sale_id=sale_id,
            incarnation=str(epoch_ms(sale.created_at)),
            quantity=sale.quantity,
            returned=before.returned,
            config=config,
            known=known,
        )
        rebuilt = RebuildView(
            remaining_before=outcome.remaining_before,
            remaining=outcome.remaining,
            reserved=outcome.reserved,
            sold=outcome.sold,
            in_flight=outcome.in_flight,
            excess=outcome.excess,
        )
        if outcome.excess:
            log.error("sale %s: %d unit(s) more promised than the sale has; left for a human", sale_id, outcome.excess)
        async with self.core.sessions.begin() as session:
            await self.core.audit(
                session,
                actor=actor,
                action="reconcile_repair",
                sale_id=sale_id,
                before=before.model_dump(mode="json", exclude={"problems"}),
                after=rebuilt.model_dump(mode="json"),
                note="; ".join(before.problems) or None,
            )
        self.core.sold_out.clear(sale_id)
        await self.core.notify(f"buyable:{sale_id}")
        self._reported.pop(sale_id, None)
        after = await self._report(sale)
        after.repaired = rebuilt
        return after

    # ---------------------------------------------------------------- periodic jobs

    async def reconcile_periodically(self) -> int:
        """Report drift of every unsettled sale (metric, log, alert); rebuild warm sales whose Redis data is
        gone. Other drift is only reported: repairing it may hide a bug a human should see."""
        if not await self._leader("reconcile", self.settings.reconcile_interval_seconds):
            return 0
        reports = await self.report_all()
        for report in reports:
            DRIFT.labels(str(report.sale_id)).set(report.drift)
            lost = report.redis is None and report.state in (SaleState.LIVE.value, SaleState.PAUSED.value)
            if lost and self.settings.auto_rebuild_lost_sales and self.core.orders is not None:
                log.error("sale %s: Redis data lost; rebuilding from the order record", report.sale_id)
                repaired = await self.repair(report.sale_id, actor=SYSTEM_ACTOR)
                DRIFT.labels(str(report.sale_id)).set(repaired.drift)
                continue
            if report.drift > 0:
                log.error("sale %s: reconciliation drift %+d: %s", report.sale_id, report.drift, report.problems)
                await self._alert(report)
            elif report.problems:
                log.warning("sale %s: %s", report.sale_id, "; ".join(report.problems))
        await self.release_orphan_allocations()
        return len(reports)

    async def release_orphan_allocations(self) -> int:
        """Give back warehouse stock allocated to sale ids that have no sale, once seen so for the grace period.

        create_sale allocates before its transaction commits; a process that dies in between leaves stock
        allocated to a sale id that will never exist (ids are never reused), which nothing else settles. The
        grace period (`FLASHSALE_ORPHAN_ALLOCATION_GRACE_SECONDS`) covers a creation still in flight; first
        sightings are kept in Redis so every replica counts from the same moment. Returns how many it released.
        """
        inventory = self.core.inventory
        if inventory is None:
            return 0
        open_allocations = await inventory.open_allocations()
        sale_ids = {int(a["sale_id"]) for a in open_allocations}
        async with self.core.sessions() as session:
            known = set(await session.scalars(select(Sale.id).where(Sale.id.in_(sale_ids)))) if sale_ids else set()
        redis = self.store.redis
        seen: dict[str, str] = await redis.hgetall(ORPHANS_KEY)  # type: ignore[assignment]
        now = time.time()
        current = set()
        released = 0
        for allocation in open_allocations:
            sale_id, sku = int(allocation["sale_id"]), str(allocation["sku"])
            if sale_id in known:
                continue
            field = f"{sale_id}:{sku}"
            current.add(field)
            first_seen = float(seen.get(field) or 0)
            if not first_seen:
                await redis.hsetnx(ORPHANS_KEY, field, str(now))
                first_seen = now
            if now - first_seen < self.settings.orphan_allocation_grace_seconds:
                continue
            # Sold and returned only grow; an unborn sale has neither, so this gives back every unit it holds.
            settled = int(allocation["sold"]) + int(allocation["returned"])
            await inventory.set_allocation(sale_id=sale_id, sku=sku, allocated=settled)
            log.warning(
                "sale id %s has no sale: its %s units of %s went back to the warehouse",
                sale_id,
                allocation["outstanding"],
                sku,
            )
            await redis.hdel(ORPHANS_KEY, field)
            released += 1
        stale = [f for f in seen if f not in current]
        if stale:
            await redis.hdel(ORPHANS_KEY, *stale)
        return released

    async def _alert(self, report: SaleReconciliation) -> None:
        event: ReconciliationDrift = {
            "sale_id": report.sale_id,
            "sku": report.sku,
            "drift": report.drift,
            "problems": report.problems,
            "at": report.checked_at.isoformat(),
        }
        try:
            entry: dict[Any, Any] = encode_event(EventType.RECONCILIATION_DRIFT, event)
            await self.store.redis.xadd(sale_alert_stream(report.sale_id), entry)
        except RedisError:
            log.warning("drift alert for sale %s not written", report.sale_id)

    async def settle(self) -> int:
        """Return ended sales' unsold units, report sold and returned units to the warehouse, and mark a
        sale settled once nothing can change any more. Running totals: every step may be repeated."""
        if not await self._leader("settle", self.settings.allocation_sync_seconds):
            return 0
        sales = await self._unsettled(200)
        UNSETTLED.set(len(sales))
        moved = 0
        for sale in sales:
            try:
                moved += await self._settle_one(sale)
            except errors.DependencyUnavailable:
                log.warning("settlement of sale %s waits for the inventory service", sale.id)
                return moved
            except errors.DependencyRefused as exc:
                log.error("the warehouse refused the settlement of sale %s: %s (%s)", sale.id, exc.detail, exc.code)
        return moved

    async def _align_state(self, sale_id: int, counters: dict[str, str]) -> None:
        """Bring Redis to the recorded state when an admin change reached only one side.

        The record paused a sale Redis still sells: Redis follows the record. Redis paused a sale the record
        says is live: the purchase script's own pause (alert_and_pause, threshold crossed) is recorded;
        any other (a resume whose Redis write failed) is undone in Redis. The row is read under its update
        lock, after any admin change in progress committed (a pause writes Redis before its commit).
        """
        redis_state = counters.get("state", "")
        if redis_state in (SaleState.DRAFT.value, SaleState.SCHEDULED.value):
            await self._open_recorded(sale_id, redis_state)
            return
        if redis_state not in (SaleState.LIVE.value, SaleState.PAUSED.value):
            return
        if redis_state == SaleState.PAUSED.value and counters.get("low_alerted") == "1":
            await self.automatic.sync_auto_pause(sale_id)  # the script's own pause (it checks the policy too)
        async with self.core.sessions.begin() as session:
            sale = await session.scalar(select(Sale).where(Sale.id == sale_id).with_for_update())
            if sale is None or sale.state == redis_state:
                return
            current = (await self.store.live_status(sale_id)).get("state")  # as it is now, under the lock
            policy_pauses = sale.low_stock_policy == LowStockPolicy.ALERT_AND_PAUSE.value
            script_pause = policy_pauses and counters.get("low_alerted") == "1"
            if sale.state == SaleState.PAUSED.value and current == SaleState.LIVE.value:
                await self.store.advance_state(sale_id, expected=SaleState.LIVE.value, new=SaleState.PAUSED.value)
            elif sale.state == SaleState.LIVE.value and current == SaleState.PAUSED.value and not script_pause:
                await self.store.advance_state(sale_id, expected=SaleState.PAUSED.value, new=SaleState.LIVE.value)

    async def _open_recorded(self, sale_id: int, redis_state: str) -> None:
        """An opening (schedule, start) committed but its Redis write failed: Redis follows the record."""
        async with self.core.sessions.begin() as session:
            sale = await session.scalar(select(Sale).where(Sale.id == sale_id).with_for_update())
            if sale is None or sale.state == redis_state or SaleState(sale.state) not in WARM_STATES:
                return
            opened = await self.store.advance_state(
                sale_id, expected=redis_state, new=sale.state, fields={"starts": epoch_ms(sale.starts_at)}
            )
        log.warning("sale %s: Redis held it %s while recorded %s; now %s", sale_id, redis_state, sale.state, opened)

    async def _settle_one(self, sale: Sale) -> int:
        if sale.state == SaleState.DRAFT.value:
            await self._report_to_warehouse(sale.id, sold=None, returned=None)
            return 1
        # Purchase events every consumer (the order service) acknowledged are no longer needed.
        await trim_acknowledged(self.store.redis, purchase_stream(sale.id), required_groups=PURCHASE_STREAM_GROUPS)
        if sale.state == SaleState.ENDED.value:
            drained = await self.store.drain_ended(sale.id)
            if drained is None:
                status = await self.store.live_status(sale.id)
                if "state" in status:  # the end never reached Redis: put it there, drain next time
                    await self.store.set_state(sale.id, SaleState.ENDED.value)
                return 0
            _returned, reserved, sold = drained
        else:
            counters = await self.store.counters(sale.id)
            if "remaining" not in counters:
                return 0  # Redis lost data: reconciliation rebuilds it first
            reserved, sold = 1, int(counters.get("sold", 0))
            await self._align_state(sale.id, counters)
        await self._report_to_warehouse(sale.id, sold=sold, returned=None)
        if sale.state == SaleState.ENDED.value and reserved == 0:
            await self._settle_ended(sale, redis_sold=sold)
        return 1

    async def _report_to_warehouse(self, sale_id: int, *, sold: int | None, returned: int | None) -> None:
        """Bring the warehouse allocation to the sale's quantity and these running totals."""
        if self.core.inventory is None:
            return
        async with self.core.sessions.begin() as session:
            # The quantity is read under a share lock held across the call: an add_stock committing meanwhile
            # (it allocates under the row's update lock) waits, and is never undone by an older quantity.
            row = (
                await session.execute(
                    select(Sale.quantity, Sale.sku).where(Sale.id == sale_id).with_for_update(read=True)
                )
            ).one()
            totals = (int(row.quantity), sold or 0, returned or 0)
            if self._reported.get(sale_id) == totals:
                return
            await self.core.inventory.set_allocation(
                sale_id=sale_id, sku=row.sku, allocated=row.quantity, sold=sold, returned=returned
            )
        self._reported[sale_id] = totals

    async def _settle_ended(self, sale: Sale, *, redis_sold: int) -> None:
        """Settle an ended sale once no reservation is open by the record: the units not paid go back.

        Redis saying nothing is reserved is not enough: after a Redis crash that lost its last second, an
        order may still await payment for a reservation Redis forgot. With the order record configured,
        settlement waits until the record has no open order either, and counts what was paid from it.
        """
        paid = redis_sold
        if self.core.orders is not None:
            now = time.monotonic()
            if now < self._next_record_check.get(sale.id, 0.0):
                return
            self._next_record_check[sale.id] = now + RECORD_CHECK_SECONDS
            record, in_flight = await self._record(sale.id)
            if int(record["reserved_units"]) or in_flight:
                log.info("sale %s ended; %s unit(s) still await payment", sale.id, record["reserved_units"])
                return
            paid = int(record["sold_units"])
        returned = sale.quantity - paid
        if returned < 0:
            log.error("sale %s: %d paid of %d units: oversold; not settled, for a human", sale.id, paid, sale.quantity)
            return
        await self._report_to_warehouse(sale.id, sold=paid, returned=returned)
        async with self.core.sessions.begin() as session:
            await session.execute(
                update(Sale)
                .where(Sale.id == sale.id, Sale.settled_at.is_(None))
                .values(returned_units=returned, settled_at=utcnow())
            )
        log.info("sale %s settled: %d sold, %d returned to the warehouse", sale.id, paid, returned)
        self._reported.pop(sale.id, None)
        self._next_record_check.pop(sale.id, None)

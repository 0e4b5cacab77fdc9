"""Reconciliation: per SKU, `on_hand = available + allocated + held + sold` from the counters and from the
ledger, and the Redis mirror checked against PostgreSQL. Drift in PostgreSQL is reported for a human; only
the mirror, a copy, is rewritten automatically."""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict

from prometheus_client import Gauge
from redis.exceptions import RedisError
from sqlalchemy import func, select

from services.inventory.ledger import StockLedger, counters_of
from services.inventory.models import LedgerEntry, LedgerKind, Sku
from services.inventory.schemas import Counters, Reconciliation, SkuReconciliation
from services.inventory.store import job_lock_key

log = logging.getLogger("inventory.reconciliation")

SKUS_OUT_OF_BALANCE = Gauge(
    "inventory_reconciliation_skus_out_of_balance", "SKUs whose PostgreSQL counters or ledger do not add up"
)
MIRROR_DRIFT = Gauge("inventory_reconciliation_mirror_drift", "SKUs whose Redis copy of `available` is missing or off")
RECONCILER_ACTOR = "system:reconciler"
_RELEASE_LOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class Reconciler:
    """The reconciliation report, the mirror repair, and the periodic job that runs both."""

    def __init__(self, ledger: StockLedger) -> None:
        self.ledger = ledger
        self.settings = ledger.settings
        self.redis = ledger.redis
        self.sessions = ledger.sessions
        self.mirror = ledger.mirror

    async def reconcile(self) -> Reconciliation:
        """Per SKU: do the counters add up, and do they match what the ledger says they must be?"""
        async with self.sessions() as session:
            # One snapshot for the counters and the ledger: read in separate snapshots, a stock change committed
            # between the statements shows as drift that is not there (and drift pages as an oversell risk).
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
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
            _reconcile_one(row, sums[row.sku], last.get(row.sku), mirror)
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
            async with self.ledger.change() as change:
                session = change.session
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
                change.audit(actor=actor, action="repair_mirror", after={"skus": stale, "drift": before.mirror_drift})
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
        return bool(await self.redis.set(job_lock_key(job), self.settings.consumer_name, nx=True, px=ms))

    async def release_leadership(self) -> None:
        """Give up the job locks this replica holds (shutdown), so another takes the next tick at once."""
        with contextlib.suppress(RedisError):
            await self.redis.eval(_RELEASE_LOCK, 1, job_lock_key("reconcile"), self.settings.consumer_name)

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


def _reconcile_one(row: Sku, sums: dict[str, int], last_available: int | None, mirror: int | None) -> SkuReconciliation:
    """One SKU's counters beside what its ledger says they must be, and every way the two disagree."""
    k = LedgerKind
    s = defaultdict(int, sums)
    from_ledger = Counters(
        on_hand=s[k.RESTOCK] + s[k.ADJUST],
        available=s[k.RESTOCK] + s[k.ADJUST] - s[k.ALLOCATE] + s[k.RETURN] - s[k.HOLD] + s[k.RELEASE],
        allocated=s[k.ALLOCATE] - s[k.RETURN] - s[k.SELL],
        held=s[k.HOLD] - s[k.RELEASE] - s[k.CONFIRM],
        sold=s[k.SELL] + s[k.CONFIRM],
    )
    counters = Counters(**counters_of(row))
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
        drift.append(f"{row.sku}: last ledger entry left available {last_available}, counters say {counters.available}")
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

"""Jobs that settle money without a human: stale payment claims, charges on closed orders, duplicate charges.

Every replica runs them; each order is settled under its row lock, and every provider call is idempotent by
its key, so two replicas doing the same work change nothing twice.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import func, select, true
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from services.order.config import OrderSettings
from services.order.models import Order, OrderState, PaymentAttempt
from services.order.payments import BACKUP, PRIMARY, PaymentRouter
from services.order.states import CLAIM_CHECK, REFUND_JOB, move, utcnow

log = logging.getLogger("order.refunds")

DUPLICATES_REFUNDED = Counter("order_duplicate_charges_refunded_total", "Duplicate provider charges refunded")
CLOSED_CHARGES_REFUNDED = Counter(
    "order_closed_order_charges_refunded_total", "Charges that landed on a closed order, refunded by the refund job"
)
REFUND_FAILURES = Counter("order_refund_failures_total", "Refunds a provider did not confirm (tried again later)")
STALE_CLAIMS = Counter("order_stale_payment_claims_total", "Payment claims settled by the claim check", ["outcome"])

MAX_BACKOFF_DOUBLINGS = 5


def _attempt(order_id: str, provider: str, outcome: str, ref: str | None, error: str | None = None) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "provider": provider,
        "outcome": outcome,
        "latency_ms": 0,
        "provider_ref": ref,
        "error": error,
        "idempotency_key": f"order:{order_id}",
    }


async def _record(session: AsyncSession, *attempts: dict[str, Any]) -> None:
    """Record attempts; a success already recorded for the same charge is not recorded twice."""
    await session.execute(
        insert(PaymentAttempt)
        .values(list(attempts))
        .on_conflict_do_nothing(
            index_elements=["provider", "provider_ref"], index_where=PaymentAttempt.outcome == "succeeded"
        )
    )


class Refunds:
    """The money jobs: stale claims, refunds of charges on closed orders, refunds of duplicate charges."""

    def __init__(
        self, *, settings: OrderSettings, sessions: async_sessionmaker[AsyncSession], payments: PaymentRouter
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.payments = payments

    async def _locked(self, session: AsyncSession, order_id: str) -> Order:
        return (await session.scalars(select(Order).where(Order.id == order_id).with_for_update())).one()

    # ---------------------------------------------------------------- claims left by a crashed process

    async def settle_stale_claims(self, limit: int = 50) -> int:
        """Orders claimed for payment longer than the claim TTL: ask the providers, then pay or release.

        A charge found at a provider makes the order paid (the buyer did pay, before the deadline, when the
        claim was taken); no charge anywhere gives the claim back, so a cancel or the sweeper may close it. A
        provider that cannot answer now is asked again on the next run. Returns the claims settled.
        """
        cutoff = utcnow() - timedelta(seconds=self.settings.payment_claim_ttl_seconds)
        async with self.sessions() as session:
            stale = (
                await session.execute(
                    select(Order.id, Order.payment_claim)
                    .where(Order.payment_claimed_at <= cutoff, Order.state == OrderState.PENDING_PAYMENT.value)
                    .order_by(Order.payment_claimed_at)
                    .limit(limit)
                )
            ).all()
        settled = 0
        for order_id, claim in stale:
            charges: list[tuple[str, str]] = []
            for provider in (PRIMARY, BACKUP):
                found = await self.payments.payments_for_order(provider=provider, order_id=order_id)
                if found is None:
                    break
                charges += [(provider, str(c["payment_id"])) for c in found if c.get("status") == "succeeded"]
            else:
                settled += await self._settle_claim(order_id, claim, charges)
        return settled

    async def _settle_claim(self, order_id: str, claim: str | None, charges: list[tuple[str, str]]) -> int:
        async with self.sessions.begin() as session:
            order = await self._locked(session, order_id)
            if order.payment_claim != claim or order.state != OrderState.PENDING_PAYMENT.value:
                return 0  # its payer finished meanwhile
            order.payment_claimed_at = order.payment_claim = None
            if not charges:
                STALE_CLAIMS.labels("released").inc()
                log.warning("stale payment claim on order %s released: no provider charged it", order_id)
                return 1
            # Each charge found is recorded; the duplicate check refunds all but the one the order keeps.
            await _record(session, *(_attempt(order_id, p, "succeeded", ref) for p, ref in charges))
            order.payment_provider, order.payment_ref = charges[0]
            move(session, order, OrderState.PAID, actor=CLAIM_CHECK, reason="charge_found_after_claim_expired")
            STALE_CLAIMS.labels("paid").inc()
            log.warning("stale payment claim on order %s settled as paid (%s)", order_id, charges[0][0])
        return 1

    # ---------------------------------------------------------------- charges that landed on a closed order

    async def refund_closed_orders(self, limit: int = 50) -> int:
        """Refund every refund_pending order at its provider and mark it refunded; returns orders refunded.

        A refund the provider does not confirm is recorded as a `refund_failed` attempt and tried again after
        a delay that doubles with each failure, so ops see it (attempts, metrics) but need not act.
        """
        failed = aliased(PaymentAttempt)
        failures = (
            select(func.count(failed.id).label("tries"), func.max(failed.at).label("last_try"))
            .where(failed.order_id == Order.id, failed.outcome == "refund_failed")
            .lateral()
        )
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(Order.id, Order.payment_provider, Order.payment_ref, *failures.c)
                    .join(failures, true())
                    .where(Order.state == OrderState.REFUND_PENDING.value)
                    .order_by(Order.closed_at)
                    .limit(limit)
                )
            ).all()
        now = utcnow()
        refunded = 0
        for order_id, provider, ref, tries, last_try in rows:
            if tries:
                wait = self.settings.refund_retry_seconds * 2 ** min(tries - 1, MAX_BACKOFF_DOUBLINGS)
                if last_try + timedelta(seconds=wait) > now:
                    continue
            if not provider or not ref:
                log.error("refund_pending order %s has no charge to refund", order_id)
                continue
            ok = await self.payments.refund(provider=provider, provider_ref=ref, idempotency_key=f"refund:{order_id}")
            refunded += await self._settle_refund(order_id, provider, ref, ok)
        return refunded

    async def _settle_refund(self, order_id: str, provider: str, ref: str, ok: bool) -> int:
        async with self.sessions.begin() as session:
            order = await self._locked(session, order_id)
            if order.state != OrderState.REFUND_PENDING.value:
                return 0  # refunded meanwhile (another replica, or ops)
            if not ok:
                REFUND_FAILURES.inc()
                await _record(session, _attempt(order_id, provider, "refund_failed", ref, "refund not confirmed"))
                return 0
            await _record(session, _attempt(order_id, provider, "refunded", ref))
            move(session, order, OrderState.REFUNDED, actor=REFUND_JOB, reason="charge_after_close_refunded")
        CLOSED_CHARGES_REFUNDED.inc()
        log.warning("refunded charge %s of closed order %s at %s", ref, order_id, provider)
        return 1

    # ---------------------------------------------------------------- charges made twice

    async def refund_duplicate_charges(self, limit: int = 50) -> int:
        """Refund charges a provider made although the order was paid through the other one.

        A primary that times out may still have charged; the backup then charged too (and a stale claim
        settled by the claim check may find both). For each paid order with an attempt at the other provider
        that failed, timed out or succeeded, ask that provider what it charged for the order and refund it
        (idempotent per payment). The check is recorded as an attempt (`duplicate_refunded` or `no_duplicate`),
        so it runs once per order and provider; a provider that cannot answer is asked again later.
        """
        checked = aliased(PaymentAttempt)
        cutoff = utcnow() - timedelta(seconds=self.settings.duplicate_check_after_seconds)
        paid_states = [OrderState.PAID.value, OrderState.FULFILLED.value, OrderState.REFUNDED.value]
        query = (
            select(PaymentAttempt.order_id, PaymentAttempt.provider)
            .join(Order, Order.id == PaymentAttempt.order_id)
            .where(
                PaymentAttempt.outcome.in_(["timeout", "error", "succeeded"]),
                Order.state.in_(paid_states),
                Order.payment_provider.is_not(None),
                Order.payment_provider != PaymentAttempt.provider,
                Order.paid_at <= cutoff,
                ~select(checked.id)
                .where(
                    checked.order_id == PaymentAttempt.order_id,
                    checked.provider == PaymentAttempt.provider,
                    checked.outcome.in_(["duplicate_refunded", "no_duplicate"]),
                )
                .exists(),
            )
            .distinct()
            .limit(limit)
        )
        async with self.sessions() as session:
            suspects = (await session.execute(query)).all()
        refunded = 0
        for order_id, provider in suspects:
            refs = await self._refund_all_at(provider, order_id)
            if refs is None:
                continue  # the provider could not answer or did not confirm: try again later
            outcome = "duplicate_refunded" if refs else "no_duplicate"
            async with self.sessions.begin() as session:
                await _record(session, _attempt(order_id, provider, outcome, ",".join(refs)[:128] or None))
            if refs:
                DUPLICATES_REFUNDED.inc(len(refs))
                refunded += len(refs)
                log.warning("refunded %d duplicate charge(s) of order %s at %s", len(refs), order_id, provider)
        return refunded

    async def _refund_all_at(self, provider: str, order_id: str) -> list[str] | None:
        """Refund every charge one provider holds for an order; the refs, or None when not all were confirmed."""
        charges = await self.payments.payments_for_order(provider=provider, order_id=order_id)
        if charges is None:
            return None
        refs = []
        for charge in charges:
            if charge.get("status") != "succeeded":
                continue
            ref = str(charge["payment_id"])
            if not await self.payments.refund(provider=provider, provider_ref=ref, idempotency_key=f"dup:{ref}"):
                return None
            refs.append(ref)
        return refs

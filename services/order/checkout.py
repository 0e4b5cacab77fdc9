"""Paying an order: claim it, charge it, settle it, each step one statement on the common path.

The order is claimed (`payment_claimed_at`, `payment_claim`) in one UPDATE before any provider is called, so
a cancel, an admin cancel or the expiry sweeper cannot close it while the charge is in flight: they leave a
claimed order alone (a cancel answers 409 PAYMENT_IN_PROGRESS), and so does a second pay. A successful charge
then marks the order paid, records the attempts, its transition and its `order.paid` event in one statement.
A claim left behind by a crashed process is settled by the claim check (services/order/refunds.py), which asks
the providers what they charged first. The provider key stays `order:<id>`, so no retry charges twice.

The pay's Idempotency-Key record rides in the same two statements: the claim takes the key (or reads the
answer a replay gets back), and the settlement stores the answer with the paid order, in one commit. A pay is
two database round trips around the charge: under a flash crowd each round trip waits for a CPU twice (here
and in PostgreSQL), and those waits, not the work, were the pay's time. A pay refused on the spot is the claim
alone, and writes nothing (docs/adr/0035-pay-latency-under-a-flash-crowd.md).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from datetime import datetime
from typing import Any

import orjson
from opentelemetry.trace import SpanKind, Tracer
from prometheus_client import Gauge, Histogram
from sqlalchemy import Executable, Row, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload
from sqlalchemy.sql import select

from services.common import tracing
from services.common.contracts import EventType
from services.common.idempotency import IdempotencyKeyInFlight
from services.common.metrics import LATENCY_BUCKETS
from services.order import errors
from services.order.idempotency import KEY_HELD, KeyUse, OrderIdempotency, key_answer, key_claim, replay
from services.order.metrics import count_paid
from services.order.models import Order, OrderState
from services.order.payments import SUCCEEDED, PaymentResult, PaymentRouter
from services.order.schemas import OrderLineOut, OrderOut
from services.order.states import move, utcnow

log = logging.getLogger("order.checkout")

PAY_SUCCESS_RATIO = Gauge("order_payment_success_ratio", "Share of the last 1,000 pay calls that succeeded")
# Where a pay call's time goes: waiting for a pooled connection, each statement, the providers.
PAY_STAGE_SECONDS = Histogram(
    "order_pay_stage_seconds", "Time of each step of a pay call", ["stage"], buckets=LATENCY_BUCKETS
)

ORDER_FIELDS = (
    "id, reservation_id, sale_id, user_id, state, currency, subtotal, discount, total, created_at, deadline_at, "
    "paid_at, closed_at, close_reason, payment_provider, pricing, coupons, reminded_at, traceparent"
)
LINES_JSON = (
    "(SELECT COALESCE(jsonb_agg(jsonb_build_object('sku', l.sku, 'sale_id', l.sale_id, 'unit_price', l.unit_price, "
    "'quantity', l.quantity, 'amount', l.amount) ORDER BY l.id), '[]'::jsonb) FROM order_lines l "
    "WHERE l.order_id = c.id) AS lines"
)
# Claim an unpaid, priced order before its deadline, unless a payment of it is in flight already.
CLAIM_ORDER = (
    "UPDATE orders SET payment_claimed_at = now(), payment_claim = :claim "
    "WHERE id = :order_id AND user_id = :user_id AND state = 'pending_payment' AND pricing = 'final' "
    "AND deadline_at > now() AND payment_claimed_at IS NULL"
)
CLAIM = text(f"WITH c AS ({CLAIM_ORDER} RETURNING {ORDER_FIELDS}) SELECT c.*, {LINES_JSON} FROM c").columns(
    coupons=JSONB, lines=JSONB
)
# The order as the claim finds it, `cur`, and whether it is payable now; the key is claimed only then, so a pay
# refused on the spot writes nothing.
CURRENT = (
    "cur AS (SELECT user_id, state, pricing, deadline_at > now() AS open, payment_claimed_at IS NOT NULL AS claimed "
    "FROM orders WHERE id = :order_id)"
)
PAYABLE = (
    "EXISTS (SELECT 1 FROM cur WHERE cur.user_id = :user_id AND cur.state = 'pending_payment' "
    "AND cur.pricing = 'final' AND cur.open AND NOT cur.claimed)"
)
# The Idempotency-Key and the order in one statement: the order is claimed only if the key was. One row: whether
# the key was taken, the record holding it otherwise (held_*), the order as found (cur_*), and the claimed
# order (NULL columns if none was).
CLAIM_WITH_KEY = text(
    f"WITH {CURRENT}, {key_claim(PAYABLE)}, "
    f"c AS ({CLAIM_ORDER} AND EXISTS (SELECT 1 FROM key_claim) RETURNING {ORDER_FIELDS}) "
    "SELECT EXISTS (SELECT 1 FROM key_claim) AS key_claimed, held.fingerprint AS held_fingerprint, "
    "held.status AS held_status, held.body AS held_body, cur.user_id AS cur_user_id, cur.state AS cur_state, "
    "cur.pricing AS cur_pricing, cur.open AS cur_open, cur.claimed AS cur_claimed, "
    f"c.*, {LINES_JSON} FROM (SELECT 1) AS one {KEY_HELD} LEFT JOIN cur ON TRUE LEFT JOIN c ON TRUE"
).columns(coupons=JSONB, lines=JSONB)
CLAIM_ONLY_COLUMNS = (
    "key_claimed",
    "held_fingerprint",
    "held_status",
    "held_body",
    "cur_user_id",
    "cur_state",
    "cur_pricing",
    "cur_open",
    "cur_claimed",
    "traceparent",
)
ATTEMPTS = (
    "INSERT INTO payment_attempts (order_id, provider, outcome, latency_ms, provider_ref, error, idempotency_key) "
    "SELECT :order_id, p, o, ms, ref, err, :key FROM unnest(CAST(:providers AS text[]), CAST(:outcomes AS text[]), "
    "CAST(:latencies AS int[]), CAST(:refs AS text[]), CAST(:errors AS text[])) AS a(p, o, ms, ref, err) "
    # One charge, one success record: a replayed answer of a charge already recorded is not a second one.
    "ON CONFLICT (provider, provider_ref) WHERE outcome = 'succeeded' DO NOTHING"
)
# The charge succeeded and the order is still open (it is claimed, so nothing closed it): paid, in one go, with
# the answer the pay's Idempotency-Key replays.
SETTLE_PAID = text(
    "WITH paid AS (UPDATE orders SET state = 'paid', paid_at = :paid_at, payment_provider = :provider, "
    "payment_ref = :ref, payment_claimed_at = NULL, payment_claim = NULL "
    "WHERE id = :order_id AND state = 'pending_payment' RETURNING id, paid_at), "
    f"attempts AS ({ATTEMPTS}), "
    "moved AS (INSERT INTO order_transitions (order_id, from_state, to_state, at, actor, reason) "
    "SELECT id, 'pending_payment', 'paid', paid_at, :actor, 'payment_succeeded' FROM paid), "
    f"event AS (INSERT INTO outbox (event_type, payload) SELECT '{EventType.ORDER_PAID}', CAST(:payload AS jsonb) "
    "FROM paid), "
    f"{key_answer('EXISTS (SELECT 1 FROM paid)')} "
    "SELECT paid_at FROM paid"
)
# No charge (declined, or no provider could take it): record the attempts and give the claim back.
SETTLE_UNPAID = text(
    f"WITH attempts AS ({ATTEMPTS}) UPDATE orders SET payment_claimed_at = NULL, payment_claim = NULL "
    "WHERE id = :order_id AND payment_claim = :claim"
)


def _attempt_params(order_id: str, result: PaymentResult) -> dict[str, Any]:
    attempts = result.attempts
    return {
        "order_id": order_id,
        "key": f"order:{order_id}",
        "providers": [a.provider for a in attempts],
        "outcomes": [a.outcome for a in attempts],
        "latencies": [a.latency_ms for a in attempts],
        "refs": [a.provider_ref for a in attempts],
        "errors": [(a.error or None) and a.error[:1000] for a in attempts],
    }


def _view(row: Row[Any], **changes: Any) -> OrderOut:
    fields = {name: value for name, value in row._mapping.items() if name not in CLAIM_ONLY_COLUMNS}
    lines = [OrderLineOut.model_validate(line) for line in fields.pop("lines")]
    fields.update(changes)
    return OrderOut(lines=lines, **fields)


def refusal(
    order_id: str, user_id: str, *, owner: str | None, state: str | None, pricing: str, open_: bool, claimed: bool
) -> Exception | None:
    """The error that says why an order (owned by `owner`; None: no such order) cannot be paid now; None if it can."""
    if state is None or owner != user_id:
        return errors.OrderNotFound(f"No order {order_id}")
    if state != OrderState.PENDING_PAYMENT.value:
        return errors.InvalidOrderState(f"The order is {state}", extra={"state": state})
    if pricing != "final":
        return errors.PricingPending("The order's coupons are still being applied", headers={"Retry-After": "1"})
    if not open_:
        return errors.OrderExpired("The payment deadline has passed", extra={"state": state})
    if claimed:
        return errors.PaymentInProgress(
            "A payment of this order is in flight; its outcome decides the order", headers={"Retry-After": "1"}
        )
    return None


class Checkout:
    """The pay endpoint's work: claim, charge through the providers, settle."""

    def __init__(
        self, *, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], payments: PaymentRouter
    ) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")  # one statement, its own transaction
        self.sessions = sessions
        self.payments = payments
        self.keys = OrderIdempotency(engine)
        self._recent: deque[bool] = deque(maxlen=1000)
        self._succeeded = 0

    async def pay(self, *, order_id: str, user_id: str, key: KeyUse) -> tuple[int, Any]:
        """Charge the buyer's order once per Idempotency-Key and record every attempt; (status, answer).

        A replay of the key gets the first answer. A refused or failed pay frees the key again.
        """
        claim = os.urandom(8).hex()
        params = {**key.params(), "claim": claim, "order_id": order_id, "user_id": user_id}
        first = (await self._statement("claim", CLAIM_WITH_KEY, params))[0]
        if first.id is None and not first.key_claimed:
            return self._not_claimed(first, order_id, user_id, key)
        try:
            row = first if first.id is not None else await self._claim_again(order_id, user_id, claim)
            answer, stored = await self._charge(row, user_id, claim, key)
        except BaseException:
            await self.keys.release(key)
            raise
        if not stored:
            await self.keys.answer(key, 200, answer)
        return 200, answer

    @staticmethod
    def _not_claimed(first: Row[Any], order_id: str, user_id: str, key: KeyUse) -> tuple[int, Any]:
        """Neither key nor order taken: a replay's first answer, or the error that says why not."""
        if first.held_fingerprint is not None:
            return replay(key, first.held_fingerprint, first.held_status, first.held_body)
        found = refusal(
            order_id,
            user_id,
            owner=first.cur_user_id,
            state=first.cur_state,
            pricing=first.cur_pricing,
            open_=bool(first.cur_open),
            claimed=bool(first.cur_claimed),
        )
        # Payable as this statement saw it, yet the key was not taken: a request with this key, committed after
        # the statement's snapshot, holds it (and the order).
        raise found or IdempotencyKeyInFlight("Retry shortly", headers={"Retry-After": "1"})

    async def _claim_again(self, order_id: str, user_id: str, claim: str) -> Row[Any]:
        """After a claim that took no order: the error that says why, or the order claimed once more."""
        refusal = await self._why_not_claimed(order_id, user_id)
        if refusal is not None:
            raise refusal
        # Payable by now (priced, or a claim given back, between the two reads): claim it again once.
        rows = await self._statement("claim", CLAIM, {"claim": claim, "order_id": order_id, "user_id": user_id})
        if rows:
            return rows[0]
        raise await self._why_not_claimed(order_id, user_id) or errors.PaymentInProgress(
            "A payment of this order is in flight; its outcome decides the order", headers={"Retry-After": "1"}
        )

    async def _charge(self, row: Row[Any], user_id: str, claim: str, key: KeyUse) -> tuple[dict[str, Any], bool]:
        """Charge the claimed order and settle it; (the answer, whether the settlement stored it for the key)."""
        started = time.perf_counter()
        tracer = tracing.TRACER
        if tracer is not None and row.traceparent:
            result = await self._traced_charge(tracer, row)
        else:
            result = await self.payments.charge(
                order_id=row.id, amount=row.total, currency=row.currency, idempotency_key=f"order:{row.id}"
            )
        PAY_STAGE_SECONDS.labels("charge").observe(time.perf_counter() - started)
        self._count(result.outcome == SUCCEEDED)
        if result.outcome != SUCCEEDED:
            await self._settle_unpaid(row.id, claim, result)
            if result.outcome == "declined":
                raise errors.PaymentDeclined("The payment provider declined the payment")
            raise errors.PaymentUnavailable(
                "Payment providers are unavailable; the order stays payable until its deadline",
                headers={"Retry-After": "2"},
            )
        paid_at = utcnow()
        view = _view(row, state=OrderState.PAID.value, paid_at=paid_at, payment_provider=result.provider)
        answer = view.model_dump(mode="json")
        if await self._settle_paid(row, user_id, result, paid_at, key, answer):
            count_paid(row.sale_id, row.total, row.currency, reminded=row.reminded_at is not None)
            return answer, True
        order = await self._charged_but_not_open(row.id, user_id, result)
        return order.model_dump(mode="json"), False

    async def _traced_charge(self, tracer: Tracer, row: Row[Any]) -> PaymentResult:
        """The charge as a child of the order's creation span: the pay request is a trace of its own, but the
        money taken belongs to the purchase's trace (docs/adr/0043-one-purchase-one-trace.md)."""
        span, traceparent = tracing.begin(tracer, "order charge", row.traceparent, SpanKind.CLIENT)
        try:
            result = await self.payments.charge(
                order_id=row.id,
                amount=row.total,
                currency=row.currency,
                idempotency_key=f"order:{row.id}",
                traceparent=traceparent,
            )
            if span is not None:
                span.set_attributes(
                    {"order.id": row.id, "payment.outcome": result.outcome, "payment.provider": result.provider or ""}
                )
            return result
        finally:
            if span is not None:
                span.end()

    def _count(self, succeeded: bool) -> None:
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._succeeded -= 1
        self._recent.append(succeeded)
        self._succeeded += succeeded
        PAY_SUCCESS_RATIO.set(self._succeeded / len(self._recent))

    async def _settle_paid(
        self, row: Row[Any], user_id: str, result: PaymentResult, paid_at: datetime, key: KeyUse, answer: Any
    ) -> bool:
        """Mark the claimed order paid with its attempts, transition, event and the key's answer; False if it was
        no longer open (nothing but the attempts is written then)."""
        payload = {
            "order_id": row.id,
            "reservation_id": row.reservation_id,
            "sale_id": row.sale_id,
            "user_id": row.user_id,
            "state": OrderState.PAID.value,
            "total": row.total,
            "currency": row.currency,
            "at": paid_at.isoformat(),
            "provider": result.provider,
            "reason": "payment_succeeded",
        }
        params = {
            **_attempt_params(row.id, result),
            **key.params(),
            "paid_at": paid_at,
            "provider": result.provider,
            "ref": result.provider_ref,
            "actor": user_id,
            "payload": orjson.dumps(payload).decode(),
            "status": 200,
            "body": orjson.dumps(answer).decode(),
        }
        return bool(await self._statement("settle", SETTLE_PAID, params))

    async def _settle_unpaid(self, order_id: str, claim: str, result: PaymentResult) -> None:
        await self._statement("settle", SETTLE_UNPAID, {**_attempt_params(order_id, result), "claim": claim})

    async def _statement(self, stage: str, statement: Executable, params: dict[str, Any]) -> list[Row[Any]]:
        """Run one autocommitted statement and return its rows, timing the wait for a connection and the run."""
        started = time.perf_counter()
        async with self.engine.connect() as conn:
            connected = time.perf_counter()
            result = await conn.execute(statement, params)
            rows = list(result.all()) if result.returns_rows else []
        PAY_STAGE_SECONDS.labels("connection").observe(connected - started)
        PAY_STAGE_SECONDS.labels(stage).observe(time.perf_counter() - connected)
        return rows

    async def _why_not_claimed(self, order_id: str, user_id: str) -> Exception | None:
        """The error that says why the order could not be claimed for payment; None when it could be now."""
        async with self.sessions() as session:
            order = await session.get(Order, order_id)
        if order is None:
            return refusal(order_id, user_id, owner=None, state=None, pricing="", open_=False, claimed=False)
        return refusal(
            order_id,
            user_id,
            owner=order.user_id,
            state=order.state,
            pricing=order.pricing,
            open_=order.deadline_at > utcnow(),
            claimed=order.payment_claimed_at is not None,
        )

    async def _charged_but_not_open(self, order_id: str, user_id: str, result: PaymentResult) -> OrderOut:
        """The charge landed, but the order was no longer open (its claim had been settled as stale).

        A closed order goes to refund_pending and the refund job gives the money back on its own; an order paid
        by another charge keeps it (the duplicate check refunds this one at its provider).
        """
        async with self.sessions.begin() as session:
            query = select(Order).where(Order.id == order_id).options(selectinload(Order.lines)).with_for_update()
            order = (await session.scalars(query)).one()
            if order.state in (OrderState.CANCELLED.value, OrderState.EXPIRED.value):
                order.payment_provider, order.payment_ref = result.provider, result.provider_ref
                move(session, order, OrderState.REFUND_PENDING, actor=user_id, reason="charged_after_close")
                log.warning("charge %s landed on closed order %s: refund_pending", result.provider_ref, order_id)
        view = OrderOut.model_validate(order)
        if order.state in (OrderState.PAID.value, OrderState.FULFILLED.value):
            return view
        raise errors.OrderClosed(
            "The order closed before the charge landed; the charge is refunded automatically",
            extra={"state": order.state},
        )

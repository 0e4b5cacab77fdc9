"""Order business logic: orders from purchase events, the state machine, payment, timeouts, the outbox."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
from prometheus_client import Counter
from redis.asyncio import Redis
from sqlalchemy import TextClause, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from services.order import errors
from services.order.checkout import Checkout
from services.order.config import OrderSettings
from services.order.coupons import CouponClient
from services.order.idempotency import KeyUse
from services.order.models import AuditEntry, Order, OrderState, OrderTransition, OutboxEvent, PaymentAttempt
from services.order.outbox import OutboxRelay
from services.order.payments import PaymentRouter
from services.order.refunds import Refunds
from services.order.schemas import (
    AdminOrderOut,
    OrderOut,
    OrderStats,
    OrderTransitionOut,
    PaymentAttemptOut,
    SaleReservation,
    SaleReservations,
)
from services.order.states import ALLOWED, SWEEPER, move, utcnow

log = logging.getLogger("order.service")

ORDERS_CREATED = Counter("order_orders_created_total", "Orders created from purchase events")
ORDER_COLUMNS = {
    "id": "text",
    "reservation_id": "text",
    "sale_id": "bigint",
    "user_id": "text",
    "state": "text",
    "currency": "text",
    "subtotal": "bigint",
    "discount": "bigint",
    "total": "bigint",
    "reserved_at": "timestamptz",
    "created_at": "timestamptz",
    "deadline_at": "timestamptz",
    "coupon_ids": "jsonb",
    "member": "boolean",
    "pricing": "text",
}
LINE_COLUMNS = {
    "order_id": "text",
    "sku": "text",
    "sale_id": "bigint",
    "unit_price": "bigint",
    "quantity": "int",
    "amount": "bigint",
}
OUTBOX_COLUMNS = {"event_type": "text", "payload": "text"}


def _unnest_insert(table: str, columns: dict[str, str], suffix: str = "") -> TextClause:
    names = ", ".join(columns)
    arrays = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in columns.items())
    return text(f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}){suffix}")


INSERT_ORDERS = _unnest_insert(
    "orders", ORDER_COLUMNS, " ON CONFLICT (reservation_id) DO NOTHING RETURNING id, reservation_id"
)
INSERT_LINES = _unnest_insert("order_lines", LINE_COLUMNS)
INSERT_OUTBOX = text(
    "INSERT INTO outbox (event_type, payload) SELECT e, CAST(p AS jsonb) "
    "FROM unnest(CAST(:event_type AS text[]), CAST(:payload AS text[])) AS t(e, p)"
)


def _columns(rows: list[dict[str, Any]], columns: dict[str, str]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in columns}


REQUIRED_EVENT_FIELDS = ("reservation_id", "sale_id", "user_id", "sku", "quantity", "unit_price")
# An order refunded by ops was paid first (its units were sold); one refunded after refund_pending
# had expired or been cancelled, so its units went back to the sale.
SALE_RESERVATIONS = text(
    "SELECT o.reservation_id, o.user_id, COALESCE(SUM(l.quantity), 0), "
    "CASE WHEN o.state = 'pending_payment' THEN 'reserved' "
    "WHEN o.state IN ('paid', 'fulfilled') "
    "OR (o.state = 'refunded' AND o.close_reason = 'refunded_by_ops') THEN 'sold' "
    "ELSE 'released' END "
    "FROM orders o LEFT JOIN order_lines l ON l.order_id = o.id "
    "WHERE o.sale_id = :sale_id GROUP BY o.id ORDER BY o.reservation_id"
)
ORDER_OF_RESERVATION = text("SELECT id FROM orders WHERE reservation_id = :rid")


def new_order_id() -> str:
    """A random, unguessable order id."""
    return os.urandom(12).hex()


def order_view(order: Order) -> OrderOut:
    """The storefront's view of an order (its lines loaded)."""
    return OrderOut.model_validate(order)


def _snapshot(order: Order) -> dict[str, Any]:
    return {"state": order.state, "total": order.total, "payment_ref": order.payment_ref}


class ParsedPurchase:
    """A purchase event checked for what an order needs."""

    __slots__ = (
        "coupon_ids",
        "currency",
        "member",
        "quantity",
        "reservation_id",
        "reserved_at",
        "sale_id",
        "sku",
        "unit_price",
        "user_id",
    )

    def __init__(self, event: dict[str, Any]) -> None:
        missing = [f for f in REQUIRED_EVENT_FIELDS if event.get(f) in (None, "")]
        if missing:
            raise ValueError(f"purchase event without {', '.join(missing)}")
        self.reservation_id = str(event["reservation_id"])[:64]
        self.sale_id = int(event["sale_id"])
        self.user_id = str(event["user_id"])[:128]
        self.sku = str(event["sku"])[:64]
        self.quantity = int(event["quantity"])
        self.unit_price = int(event["unit_price"])
        self.currency = str(event.get("currency") or "USD")[:3]
        if self.quantity < 1 or self.unit_price < 0:
            raise ValueError("purchase event with a bad quantity or price")
        coupons = event.get("coupon_ids") or []
        if not isinstance(coupons, list) or len(coupons) > 5 or not all(isinstance(c, str) for c in coupons):
            raise ValueError("purchase event with malformed coupon_ids")
        self.coupon_ids = [c[:32] for c in coupons]
        self.member = bool(event.get("member"))
        reserved = event.get("reserved_at")
        self.reserved_at = datetime.fromisoformat(reserved) if isinstance(reserved, str) else None


class OrderService:
    """Everything the order service does, over one engine, one Redis pool and the payment router."""

    def __init__(
        self,
        *,
        settings: OrderSettings,
        redis: Redis,
        sessions: async_sessionmaker[AsyncSession],
        payments: PaymentRouter,
        coupons: CouponClient | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sessions = sessions
        self.payments = payments
        self.coupons = coupons
        self.outbox = OutboxRelay(settings=settings, redis=redis, sessions=sessions)
        self.checkout = Checkout(engine=sessions.kw["bind"], sessions=sessions, payments=payments)
        self.refunds = Refunds(settings=settings, sessions=sessions, payments=payments)

    # ---------------------------------------------------------------- orders from purchase events

    async def create_orders(self, events: Sequence[dict[str, Any]]) -> int:
        """Create one order per reservation, in one transaction; repeats are ignored. Returns new orders."""
        parsed = [ParsedPurchase(e) for e in events]  # a bad event fails the batch; the consumer isolates it
        if not parsed:
            return 0
        now = utcnow()
        deadline = now + timedelta(seconds=self.settings.payment_deadline_seconds)
        rows = []
        by_rid: dict[str, ParsedPurchase] = {}
        for p in parsed:
            if p.reservation_id in by_rid:
                continue
            by_rid[p.reservation_id] = p
            amount = p.unit_price * p.quantity
            rows.append(
                {
                    "id": new_order_id(),
                    "reservation_id": p.reservation_id,
                    "sale_id": p.sale_id,
                    "user_id": p.user_id,
                    "state": OrderState.PENDING_PAYMENT.value,
                    "currency": p.currency,
                    "subtotal": amount,
                    "discount": 0,
                    "total": amount,
                    "reserved_at": p.reserved_at,
                    "created_at": now,
                    "deadline_at": deadline,
                    "coupon_ids": orjson.dumps(p.coupon_ids).decode(),
                    "member": p.member,
                    "pricing": "coupons_pending" if p.coupon_ids else "final",
                }
            )
        async with self.sessions.begin() as session:
            # unnest() over column arrays: one prepared statement per table, however large the batch.
            created = (await session.execute(INSERT_ORDERS, _columns(rows, ORDER_COLUMNS))).all()
            if not created:
                return 0
            lines = []
            outbox = []
            for order_id, rid in created:
                p = by_rid[rid]
                amount = p.unit_price * p.quantity
                lines.append(
                    {
                        "order_id": order_id,
                        "sku": p.sku,
                        "sale_id": p.sale_id,
                        "unit_price": p.unit_price,
                        "quantity": p.quantity,
                        "amount": amount,
                    }
                )
                payload = {
                    "order_id": order_id,
                    "reservation_id": rid,
                    "sale_id": p.sale_id,
                    "user_id": p.user_id,
                    "total": amount,
                    "currency": p.currency,
                    "deadline_at": deadline.isoformat(),
                }
                outbox.append({"event_type": "order.created", "payload": orjson.dumps(payload).decode()})
            await session.execute(INSERT_LINES, _columns(lines, LINE_COLUMNS))
            await session.execute(INSERT_OUTBOX, _columns(outbox, OUTBOX_COLUMNS))
        ORDERS_CREATED.inc(len(created))
        with_coupons = [order_id for order_id, rid in created if by_rid[rid].coupon_ids]
        if with_coupons and self.coupons is not None:
            await self.price_with_coupons(order_ids=with_coupons)
        return len(created)

    async def price_with_coupons(self, *, order_ids: Sequence[str] | None = None, limit: int = 100) -> int:
        """Price orders that name coupons through the coupon service (which locks the coupons).

        Runs right after the orders are created and again from a background job for any the coupon
        service could not answer yet; an order is payable only once priced. An order that closed while
        unpriced gets an `order.coupons_released` event (a lock may have landed after its close event),
        and a refusal by the coupon service (4xx) prices the order without coupons. Returns orders priced.
        """
        if self.coupons is None:
            return 0
        query = (
            select(Order)
            .where(Order.pricing == "coupons_pending")
            .options(selectinload(Order.lines))
            .order_by(Order.created_at)
            .limit(limit)
        )
        if order_ids is not None:
            query = query.where(Order.id.in_(list(order_ids)))
        async with self.sessions() as session:
            found = list((await session.scalars(query)).all())
        open_orders = [o for o in found if o.state == OrderState.PENDING_PAYMENT.value]
        closed = [o for o in found if o.state != OrderState.PENDING_PAYMENT.value]
        quotes = await asyncio.gather(*(self._coupon_quote(o) for o in open_orders))
        priced = 0
        async with self.sessions.begin() as session:
            for order in closed:
                await self._release_coupons_of_closed(session, order)
            for order, quote in zip(open_orders, quotes, strict=True):
                if quote is None:
                    continue
                discount = max(0, min(int(quote["discount"]), order.subtotal))
                result = await session.execute(
                    update(Order)
                    .where(
                        Order.id == order.id,
                        Order.pricing == "coupons_pending",
                        Order.state == OrderState.PENDING_PAYMENT.value,
                    )
                    .values(
                        discount=discount,
                        total=order.subtotal - discount,
                        coupons={"discounts": quote["discounts"], "rejections": quote["rejections"]},
                        pricing="final",
                    )
                )
                if getattr(result, "rowcount", 0):
                    priced += 1
                    continue
                current = await session.get(Order, order.id)
                if current is not None and current.state != OrderState.PENDING_PAYMENT.value:
                    # Closed while the coupon service answered; priced (and maybe paid) by another replica meanwhile
                    # it is left alone.
                    await self._release_coupons_of_closed(session, current)
        return priced

    async def _coupon_quote(self, order: Order) -> dict[str, Any] | None:
        """The coupon service's price for an order; None when it could not answer (retried later)."""
        assert self.coupons is not None
        lines = [
            {"sku": li.sku, "sale_id": li.sale_id, "unit_price": li.unit_price, "quantity": li.quantity}
            for li in order.lines
        ]
        try:
            return await self.coupons.lock(
                order_id=order.id, user_id=order.user_id, member=order.member, lines=lines, coupon_ids=order.coupon_ids
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code >= 500:
                log.warning("coupon pricing of order %s deferred: %s", order.id, exc.response.status_code)
                return None
            # Refused for good (bad coupon ids...): the order is priced without coupons and says why.
            detail = exc.response.text[:300]
            return {
                "discount": 0,
                "discounts": [],
                "rejections": [
                    {"coupon_id": c, "code": "COUPON_SERVICE_REFUSED", "detail": detail} for c in order.coupon_ids
                ],
            }
        except httpx.HTTPError as exc:
            log.warning("coupon pricing of order %s deferred: %s", order.id, type(exc).__name__)
            return None

    async def _release_coupons_of_closed(self, session: AsyncSession, order: Order) -> None:
        """Free the coupons of an order that closed before it was priced, once; a priced or paid order keeps them."""
        unpaid_closed = [OrderState.CANCELLED.value, OrderState.EXPIRED.value]
        result = await session.execute(
            update(Order)
            .where(Order.id == order.id, Order.pricing == "coupons_pending", Order.state.in_(unpaid_closed))
            .values(pricing="abandoned")
        )
        if not getattr(result, "rowcount", 0):
            return
        session.add(
            OutboxEvent(
                event_type="order.coupons_released",
                payload={"order_id": order.id, "user_id": order.user_id, "at": utcnow().isoformat()},
            )
        )

    # ---------------------------------------------------------------- storefront reads

    async def _load(self, session: AsyncSession, order_id: str, *, lock: bool = False) -> Order | None:
        query = select(Order).where(Order.id == order_id).options(selectinload(Order.lines))
        if lock:
            query = query.with_for_update()
        return (await session.scalars(query)).first()

    async def get_order(self, *, order_id: str, user_id: str) -> OrderOut:
        """One of the user's orders; another user's is not found."""
        async with self.sessions() as session:
            order = await self._load(session, order_id)
        if order is None or order.user_id != user_id:
            raise errors.OrderNotFound(f"No order {order_id}")
        return order_view(order)

    async def get_by_reservation(self, *, reservation_id: str, user_id: str, wait: float) -> OrderOut:
        """The order of a reservation, waiting up to `wait` seconds for it to be created."""
        deadline = time.monotonic() + min(wait, self.settings.max_long_poll_seconds)
        delay = 0.05
        while True:
            # A flash crowd long-polls here while it pays: each miss is one autocommitted probe, no session.
            async with self.checkout.engine.connect() as conn:
                found = (await conn.execute(ORDER_OF_RESERVATION, {"rid": reservation_id})).first()
            if found is not None:
                async with self.sessions() as session:
                    order = await self._load(session, found[0])
                if order is None or order.user_id != user_id:
                    raise errors.OrderNotFound(f"No order for reservation {reservation_id}")
                return order_view(order)
            if time.monotonic() + delay > deadline:
                raise errors.OrderNotFound(
                    f"No order for reservation {reservation_id} yet", extra={"retry_after_seconds": 1}
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def list_orders(self, *, user_id: str, limit: int, offset: int) -> list[OrderOut]:
        """The user's orders, newest first."""
        async with self.sessions() as session:
            rows = await session.scalars(
                select(Order)
                .where(Order.user_id == user_id)
                .options(selectinload(Order.lines))
                .order_by(Order.created_at.desc(), Order.id)
                .limit(limit)
                .offset(offset)
            )
            return [order_view(o) for o in rows]

    # ---------------------------------------------------------------- the state machine

    async def _owned_locked(self, session: AsyncSession, order_id: str, user_id: str | None) -> Order:
        order = await self._load(session, order_id, lock=True)
        if order is None or (user_id is not None and order.user_id != user_id):
            raise errors.OrderNotFound(f"No order {order_id}")
        return order

    async def cancel(self, *, order_id: str, user_id: str) -> OrderOut:
        """The buyer cancels an unpaid order; the reservation is released through the outbox event."""
        async with self.sessions.begin() as session:
            order = await self._owned_locked(session, order_id, user_id)
            self._close(session, order, reason="cancelled_by_buyer", actor=user_id)
        return order_view(order)

    def _close(self, session: AsyncSession, order: Order, *, reason: str, actor: str) -> None:
        """Cancel a locked order, unless a payment of it is in flight (its outcome decides the order)."""
        if order.payment_claimed_at is not None and order.state == OrderState.PENDING_PAYMENT.value:
            raise errors.PaymentInProgress(
                "A payment of this order is in flight; cancel again once it has an outcome",
                headers={"Retry-After": "1"},
                extra={"state": order.state},
            )
        move(session, order, OrderState.CANCELLED, actor=actor, reason=reason)
        order.close_reason = reason

    async def pay(self, *, order_id: str, user_id: str, key: KeyUse) -> tuple[int, Any]:
        """Charge the buyer's order once per Idempotency-Key (services/order/checkout.py); (status, answer)."""
        return await self.checkout.pay(order_id=order_id, user_id=user_id, key=key)

    async def expire_due(self, limit: int = 500) -> int:
        """Expire unpaid orders past their deadline; safe with every replica running it (SKIP LOCKED)."""
        now = utcnow()
        async with self.sessions.begin() as session:
            due = (
                await session.scalars(
                    select(Order)
                    .where(
                        Order.state == OrderState.PENDING_PAYMENT.value,
                        Order.deadline_at <= now,
                        Order.payment_claimed_at.is_(None),  # a payment in flight decides the order
                    )
                    .order_by(Order.deadline_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for order in due:
                order.close_reason = "payment_timeout"
                move(session, order, OrderState.EXPIRED, actor=SWEEPER, reason="payment_timeout")
        return len(due)

    async def relay_outbox(self) -> int:
        """Publish committed outbox events to the order events stream, oldest first; at least once."""
        return await self.outbox.relay()

    # ---------------------------------------------------------------- admin

    async def _audit(
        self,
        session: AsyncSession,
        *,
        actor: str,
        action: str,
        order_id: str | None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> None:
        session.add(AuditEntry(actor=actor, action=action, order_id=order_id, before=before, after=after, note=note))

    async def audit_read(self, *, actor: str, action: str) -> None:
        """Record an admin read."""
        async with self.sessions.begin() as session:
            await self._audit(session, actor=actor, action=action, order_id=None)

    async def admin_search(
        self,
        *,
        sale_id: int | None,
        user_id: str | None,
        state: OrderState | None,
        limit: int,
        offset: int,
        close_reason: str | None = None,
    ) -> list[OrderOut]:
        """Orders by sale, user, state and close reason, newest first."""
        query = select(Order).options(selectinload(Order.lines)).order_by(Order.created_at.desc(), Order.id)
        if close_reason is not None:
            query = query.where(Order.close_reason == close_reason)
        if sale_id is not None:
            query = query.where(Order.sale_id == sale_id)
        if user_id is not None:
            query = query.where(Order.user_id == user_id)
        if state is not None:
            query = query.where(Order.state == state.value)
        async with self.sessions() as session:
            return [order_view(o) for o in await session.scalars(query.limit(limit).offset(offset))]

    async def admin_get(self, order_id: str) -> AdminOrderOut:
        """One order with its payment attempts and its history of transitions."""
        async with self.sessions() as session:
            order = await self._load(session, order_id)
            if order is None:
                raise errors.OrderNotFound(f"No order {order_id}")
            attempts = await session.scalars(
                select(PaymentAttempt).where(PaymentAttempt.order_id == order_id).order_by(PaymentAttempt.id)
            )
            history = await session.scalars(
                select(OrderTransition).where(OrderTransition.order_id == order_id).order_by(OrderTransition.id)
            )
            return AdminOrderOut(
                **order_view(order).model_dump(),
                payment_ref=order.payment_ref,
                payment_claimed_at=order.payment_claimed_at,
                attempts=[PaymentAttemptOut.model_validate(a) for a in attempts],
                history=[OrderTransitionOut.model_validate(t) for t in history],
            )

    async def admin_transition(
        self, *, actor: str, order_id: str, action: str, reason: str = "cancelled_by_ops"
    ) -> OrderOut:
        """force_cancel (unpaid), fulfil (paid) or refund (paid or refund_pending)."""
        async with self.sessions.begin() as session:
            order = await self._owned_locked(session, order_id, None)
            before = _snapshot(order)
            if action == "cancel":
                self._close(session, order, reason=reason, actor=actor)
            elif action == "fulfil":
                move(session, order, OrderState.FULFILLED, actor=actor, reason="fulfilled_by_ops")
            else:
                if OrderState.REFUNDED not in ALLOWED[OrderState(order.state)]:
                    raise errors.InvalidOrderState(f"An order that is {order.state} cannot be refunded")
                if order.payment_ref and order.payment_provider:
                    refunded = await self.payments.refund(
                        provider=order.payment_provider,
                        provider_ref=order.payment_ref,
                        idempotency_key=f"refund:{order.id}",
                    )
                    if not refunded:
                        raise errors.PaymentUnavailable("The provider did not confirm the refund; try again")
                order.close_reason = order.close_reason or "refunded_by_ops"
                move(session, order, OrderState.REFUNDED, actor=actor, reason="refunded_by_ops")
            await self._audit(
                session, actor=actor, action=action, order_id=order_id, before=before, after=_snapshot(order)
            )
        return order_view(order)

    async def sale_reservations(self, *, sale_id: int) -> SaleReservations:
        """Every reservation of a sale with an order, and whether its units are reserved, sold or released."""
        async with self.sessions() as session:
            rows = (await session.execute(SALE_RESERVATIONS, {"sale_id": sale_id})).all()
        reservations = [
            SaleReservation(reservation_id=r[0], user_id=r[1], quantity=int(r[2]), stock=r[3]) for r in rows
        ]
        units = {"reserved": 0, "sold": 0, "released": 0}
        for item in reservations:
            units[item.stock] += item.quantity
        return SaleReservations(
            sale_id=sale_id,
            reserved_units=units["reserved"],
            sold_units=units["sold"],
            released_units=units["released"],
            reservations=reservations,
        )

    async def stats(self, *, sale_id: int | None) -> OrderStats:
        """Orders, paid, GMV, payment success rate and median time to pay."""
        where = [Order.sale_id == sale_id] if sale_id is not None else []
        paid_states = [OrderState.PAID.value, OrderState.FULFILLED.value]
        async with self.sessions() as session:
            by_state = dict(
                (await session.execute(select(Order.state, func.count()).where(*where).group_by(Order.state))).all()
            )
            gmv = await session.scalar(
                select(func.coalesce(func.sum(Order.total), 0)).where(*where, Order.state.in_(paid_states))
            )
            median = await session.scalar(
                select(
                    func.percentile_cont(0.5).within_group(
                        func.extract("epoch", Order.paid_at - Order.created_at).asc()
                    )
                ).where(*where, Order.paid_at.is_not(None))
            )
            attempts_q = select(PaymentAttempt.outcome, func.count()).join(Order, Order.id == PaymentAttempt.order_id)
            attempts = dict((await session.execute(attempts_q.where(*where).group_by(PaymentAttempt.outcome))).all())
        tried = sum(n for outcome, n in attempts.items() if outcome != "circuit_open")
        return OrderStats(
            sale_id=sale_id,
            orders=sum(by_state.values()),
            by_state=by_state,
            paid=sum(by_state.get(s, 0) for s in paid_states),
            gmv=int(gmv or 0),
            payment_attempts=tried,
            payment_success_rate=(attempts.get("succeeded", 0) / tried) if tried else None,
            median_seconds_to_pay=float(median) if median is not None else None,
        )

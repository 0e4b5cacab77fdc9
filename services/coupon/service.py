"""Coupon business logic: templates, claims, wallets, quotes, and coupons locked/used/released with orders."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter
from redis.exceptions import RedisError
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.contracts import EventType
from services.common.idempotency import IdempotencyKeyReused
from services.common.resources import RedisClient
from services.coupon import errors
from services.coupon.config import CouponSettings
from services.coupon.models import AuditEntry, Coupon, CouponState, PaidOrder, Template
from services.coupon.pricing import Quote, quote, refund_amount, settled_total
from services.coupon.rules import CouponRule, Customer, Line, Tier, validate_rule
from services.coupon.schemas import (
    ClaimedCoupon,
    DiscountOut,
    LineIn,
    QuoteOut,
    RefundOut,
    RejectionOut,
    TemplateCreate,
    TemplateOut,
    TemplateStats,
    WalletCoupon,
)
from services.coupon.store import ClaimStore

log = logging.getLogger("coupon.service")

CLAIMS = Counter("coupon_claims_total", "Claim attempts by outcome", ["outcome"])
# Order events that free an order's locked coupons (a paid order uses them).
COUPON_FREEING_EVENTS = frozenset(
    {EventType.ORDER_CANCELLED, EventType.ORDER_EXPIRED, EventType.ORDER_COUPONS_RELEASED}
)


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def _ms(dt: datetime | None) -> str:
    return str(int(dt.timestamp() * 1000)) if dt else ""


def _from_ms(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


def rule_of(template: Template | TemplateCreate, coupon: Coupon | None = None) -> CouponRule:
    """What the pricing engine needs of a template (and of one held coupon)."""
    return CouponRule(
        coupon_id=coupon.id if coupon else "template",
        template_id=getattr(template, "id", 0) or 0,
        kind=template.kind,  # type: ignore[arg-type]
        amount_off=template.amount_off,
        percent_bp=template.percent_bp,
        cap=template.cap,
        min_spend=template.min_spend,
        tiers=tuple(
            Tier(
                spend=int(t["spend"] if isinstance(t, dict) else t.spend),
                off=int(t["off"] if isinstance(t, dict) else t.off),
            )
            for t in template.tiers
        ),
        scope=template.scope,  # type: ignore[arg-type]
        scope_skus=frozenset(template.scope_skus),
        scope_sales=frozenset(template.scope_sales),
        stacking_group=template.stacking_group,
        exclusive=template.exclusive,
        valid_from=coupon.valid_from if coupon else template.valid_from,
        valid_until=coupon.valid_until if coupon else template.valid_until,
        state=(coupon.state if coupon else "available"),  # type: ignore[arg-type]
        locked_by=coupon.order_id if coupon else None,
    )


def quote_view(q: Quote) -> QuoteOut:
    """The API shape of a quote."""
    return QuoteOut(
        subtotal=q.subtotal,
        discounts=[
            DiscountOut(coupon_id=d.coupon_id, template_id=d.template_id, kind=d.kind, amount=d.amount, reason=d.reason)
            for d in q.discounts
        ],
        discount=q.discount,
        total=q.total,
        rejections=[RejectionOut(coupon_id=r.coupon_id, code=r.code, detail=r.detail) for r in q.rejections],
    )


class CouponService:
    """Everything the coupon service does, over one engine and one Redis pool."""

    def __init__(
        self, *, settings: CouponSettings, redis: RedisClient, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sessions = sessions
        self.store = ClaimStore(redis)

    # ---------------------------------------------------------------- templates (admin)

    async def _audit(self, session: AsyncSession, **fields: Any) -> None:
        session.add(AuditEntry(**fields))

    def claim_config(self, t: Template) -> dict[str, Any]:
        """What the claim script needs of a template."""
        return {
            "incarnation": _ms(t.created_at),
            "kind": t.kind,
            "state": t.state,
            "total": t.total_quantity,
            "limit": t.per_user_limit,
            "starts": _ms(t.valid_from),
            "ends": _ms(t.valid_until),
        }

    async def create_template(self, *, actor: str, data: TemplateCreate) -> TemplateOut:
        """Validate, record and open a template for claims."""
        problems = validate_rule(rule_of(data))
        if problems:
            raise errors.InvalidTemplate("; ".join(problems), extra={"problems": problems})
        values = data.model_dump()
        values["tiers"] = [{"spend": t.spend, "off": t.off} for t in data.tiers]
        async with self.sessions.begin() as session:
            template = Template(**values, state="active", created_by=actor)
            session.add(template)
            await session.flush()
            await session.refresh(template)
            out = TemplateOut.model_validate(template)
            await self._audit(
                session, actor=actor, action="create", template_id=template.id, after=out.model_dump(mode="json")
            )
            await self.store.load_template(template_id=template.id, config=self.claim_config(template))
        return out

    async def set_template_state(self, *, actor: str, template_id: int, state: str) -> TemplateOut:
        """Pause or resume claims."""
        async with self.sessions.begin() as session:
            template = await session.get(Template, template_id, with_for_update=True)
            if template is None:
                raise errors.TemplateNotFound(f"No template {template_id}")
            before = template.state
            template.state = state
            await self.store.set_state(template_id, state)
            await self._audit(
                session,
                actor=actor,
                action=state,
                template_id=template_id,
                before={"state": before},
                after={"state": state},
            )
            return TemplateOut.model_validate(template)

    async def list_templates(self, *, only_claimable: bool) -> list[TemplateOut]:
        """Templates, newest first; storefronts see only active ones whose window is open."""
        query = select(Template).order_by(Template.id.desc()).limit(500)
        if only_claimable:
            now = utcnow()
            query = query.where(
                Template.state == "active",
                Template.kind != "compensation",
                (Template.valid_until.is_(None)) | (Template.valid_until > now),
            )
        async with self.sessions() as session:
            return [TemplateOut.model_validate(t) for t in await session.scalars(query)]

    async def stats(self, template_id: int) -> TemplateStats:
        """Claimed, used, and the discount given, per template."""
        async with self.sessions() as session:
            template = await session.get(Template, template_id)
            if template is None:
                raise errors.TemplateNotFound(f"No template {template_id}")
            rows = dict(
                (
                    await session.execute(
                        select(Coupon.state, func.count())
                        .where(Coupon.template_id == template_id)
                        .group_by(Coupon.state)
                    )
                ).all()
            )
            given = await session.scalar(
                select(func.coalesce(func.sum(Coupon.discount), 0)).where(
                    Coupon.template_id == template_id, Coupon.state == CouponState.USED.value
                )
            )
        return TemplateStats(
            template_id=template_id,
            total_quantity=template.total_quantity,
            claimed=await self.store.claimed(template_id),
            in_wallets=sum(rows.values()),
            locked=rows.get(CouponState.LOCKED.value, 0),
            used=rows.get(CouponState.USED.value, 0),
            discount_given=int(given or 0),
        )

    # ---------------------------------------------------------------- claims and wallets

    async def claim(self, *, template_id: int, user_id: str, key: str, compensation: bool = False) -> ClaimedCoupon:
        """Claim one coupon; limits are decided by one Lua call, the wallet row follows.

        Compensation templates are issued by ops only (`compensation=True`); a shopper's claim is refused.
        """
        coupon_id = os.urandom(12).hex()
        try:
            res = await self.store.claim(
                template_id=template_id,
                user_id=user_id,
                coupon_id=coupon_id,
                key=key,
                ttl=self.settings.claim_idempotency_ttl_seconds,
                compensation=compensation,
            )
        except RedisError as exc:
            CLAIMS.labels("unavailable").inc()
            log.warning("claim on template %s: Redis call failed: %s: %s", template_id, type(exc).__name__, exc)
            raise errors.ClaimUnavailable("Retry with the same Idempotency-Key", headers={"Retry-After": "1"}) from None
        kind = res[0]
        if kind == "REPLAY" and res[1] == coupon_id:
            # This request's own first call ran but its answer was lost (the store resent it): a new claim.
            kind = "OK"
        CLAIMS.labels(kind.lower()).inc()
        if kind == "REPLAY":
            return ClaimedCoupon(coupon_id=res[1], template_id=template_id)
        if kind == "OK":
            try:
                await self._persist_claims([{"coupon_id": coupon_id, "template_id": template_id, "user_id": user_id}])
            except (SQLAlchemyError, OSError):
                # The claim stands (Redis decided and its stream holds it); the wallet consumer writes it later.
                log.info("wallet write of %s deferred to the claim stream", coupon_id)
            return ClaimedCoupon(coupon_id=coupon_id, template_id=template_id)
        if kind == "NOT_FOUND":
            raise errors.TemplateNotFound(f"No template {template_id}")
        if kind == "EXHAUSTED":
            raise errors.CouponsExhausted("Every coupon of this template has been claimed")
        if kind == "LIMIT":
            raise errors.ClaimLimitReached(f"You hold {res[1]} of at most {res[2]} coupons of this template")
        if kind == "NOT_CLAIMABLE":
            raise errors.TemplateNotFound(f"No claimable template {template_id}")
        reasons = {
            "PAUSED": "Claims are paused",
            "NOT_STARTED": "Claims have not opened",
            "ENDED": "Claims have closed",
        }
        raise errors.ClaimWindowClosed(reasons.get(kind, kind))

    async def _persist_claims(self, claims: Sequence[dict[str, Any]]) -> None:
        """Write claimed coupons into wallets, once each (from the claim call, or later from the stream)."""
        if not claims:
            return
        template_ids = {int(c["template_id"]) for c in claims}
        async with self.sessions.begin() as session:
            templates = {t.id: t for t in await session.scalars(select(Template).where(Template.id.in_(template_ids)))}
            rows = []
            for c in claims:
                t = templates.get(int(c["template_id"]))
                if t is None:
                    continue
                claimed_at = _from_ms(c["claimed_at_ms"]) if c.get("claimed_at_ms") else utcnow()
                until = claimed_at + timedelta(days=t.valid_days) if t.valid_days else t.valid_until
                rows.append(
                    {
                        "id": str(c["coupon_id"]),
                        "template_id": t.id,
                        "user_id": str(c["user_id"]),
                        "state": CouponState.AVAILABLE.value,
                        "source": str(c.get("source", "claim")),
                        "claimed_at": claimed_at,
                        "valid_from": None if t.valid_days else t.valid_from,
                        "valid_until": until,
                    }
                )
            if rows:
                await session.execute(insert(Coupon).values(rows).on_conflict_do_nothing(index_elements=["id"]))

    async def wallet(self, *, user_id: str, state: CouponState | None) -> list[WalletCoupon]:
        """A user's coupons; past their validity they show as expired."""
        now = utcnow()
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(Coupon, Template)
                    .join(Template, Template.id == Coupon.template_id)
                    .where(Coupon.user_id == user_id)
                    .order_by(Coupon.claimed_at.desc())
                    .limit(1000)
                )
            ).all()
        out = []
        for coupon, template in rows:
            effective = coupon.state
            if effective == CouponState.AVAILABLE.value and coupon.valid_until and coupon.valid_until <= now:
                effective = CouponState.EXPIRED.value
            if state is not None and effective != state.value:
                continue
            out.append(
                WalletCoupon(
                    coupon_id=coupon.id,
                    template=TemplateOut.model_validate(template),
                    state=effective,
                    claimed_at=coupon.claimed_at,
                    valid_from=coupon.valid_from,
                    valid_until=coupon.valid_until,
                    order_id=coupon.order_id,
                )
            )
        return out

    # ---------------------------------------------------------------- quotes and the order lifecycle

    async def _customer(self, session: AsyncSession, user_id: str, is_member: bool) -> Customer:
        paid = await session.scalar(select(func.count()).select_from(PaidOrder).where(PaidOrder.user_id == user_id))
        return Customer(user_id=user_id, is_member=is_member, paid_orders=int(paid or 0))

    async def _held(
        self, session: AsyncSession, user_id: str, coupon_ids: Sequence[str] | None, *, lock: bool
    ) -> list[tuple[Coupon, Template]]:
        query = (
            select(Coupon, Template)
            .join(Template, Template.id == Coupon.template_id)
            .where(Coupon.user_id == user_id)
            .order_by(Coupon.id)
        )
        if coupon_ids is not None:
            query = query.where(Coupon.id.in_(list(coupon_ids)))
        else:
            query = query.where(Coupon.state == CouponState.AVAILABLE.value).limit(200)
        if lock:
            query = query.with_for_update(of=Coupon)
        return [(c, t) for c, t in (await session.execute(query)).all()]

    async def quote(
        self, *, user_id: str, is_member: bool, lines: Sequence[LineIn], coupon_ids: Sequence[str] | None
    ) -> QuoteOut:
        """Price order lines with chosen coupons, or the best combination of the user's coupons."""
        async with self.sessions() as session:
            customer = await self._customer(session, user_id, is_member)
            held = await self._held(session, user_id, coupon_ids, lock=False)
        rules = [rule_of(t, c) for c, t in held]
        result = quote(_lines(lines), customer, rules, now=utcnow(), chosen=coupon_ids)
        return quote_view(result)

    async def lock_for_order(
        self,
        *,
        order_id: str,
        user_id: str,
        is_member: bool,
        lines: Sequence[LineIn],
        coupon_ids: Sequence[str] | None,
    ) -> QuoteOut:
        """Price an order and lock the coupons it uses; a coupon another order holds is refused with a code.

        Row locks make two orders racing for one coupon take turns: the first locks it, the second is
        priced without it (ALREADY_USED). Repeating the call for the same order gives the same answer.
        """
        async with self.sessions.begin() as session:
            customer = await self._customer(session, user_id, is_member)
            held = await self._held(session, user_id, coupon_ids, lock=True)
            rules = [rule_of(t, c) for c, t in held]
            result = quote(_lines(lines), customer, rules, now=utcnow(), chosen=coupon_ids, order_id=order_id)
            applied = {d.coupon_id: d.amount for d in result.discounts}
            now = utcnow()
            for coupon, _template in held:
                if coupon.id in applied:
                    coupon.state = CouponState.LOCKED.value
                    coupon.order_id = order_id
                    coupon.discount = applied[coupon.id]
                    coupon.locked_at = now
                elif coupon.state == CouponState.LOCKED.value and coupon.order_id == order_id:
                    # An earlier call for this order locked it, but it no longer applies: let it go.
                    coupon.state = CouponState.AVAILABLE.value
                    coupon.order_id = None
                    coupon.discount = None
                    coupon.locked_at = None
        return quote_view(result)

    async def refund_amount(
        self, *, order_id: str, user_id: str, lines: Sequence[LineIn], refunded: Sequence[LineIn]
    ) -> RefundOut:
        """What to give back for returned lines of an order that used coupons (see `pricing.refund_amount`)."""
        async with self.sessions() as session:
            held = (
                await session.execute(
                    select(Coupon, Template)
                    .join(Template, Template.id == Coupon.template_id)
                    .where(Coupon.order_id == order_id, Coupon.user_id == user_id)
                    .order_by(Coupon.locked_at, Coupon.id)
                )
            ).all()
            customer = await self._customer(session, user_id, False)
        rules = [rule_of(t, c) for c, t in held]
        now = utcnow()
        try:
            paid = settled_total(_lines(lines), customer, rules)
            refund = refund_amount(
                lines=_lines(lines), refunded=_lines(refunded), customer=customer, coupons=rules, now=now
            )
        except ValueError as exc:
            raise errors.InvalidRefund(str(exc)) from None
        return RefundOut(order_id=order_id, paid=paid, kept_total=paid - refund, refund=refund)

    async def on_order_event(self, event: dict[str, Any]) -> int:
        """Use coupons of paid orders, free those of cancelled or expired ones; repeats change nothing.

        Returns how many coupons changed state.
        """
        event_type = event.get("type")
        order_id = event.get("order_id")
        if not order_id:
            return 0
        changed: Any = None
        async with self.sessions.begin() as session:
            if event_type == EventType.ORDER_PAID:
                changed = await session.execute(
                    update(Coupon)
                    .where(Coupon.order_id == order_id, Coupon.state == CouponState.LOCKED.value)
                    .values(state=CouponState.USED.value, used_at=utcnow())
                )
                if event.get("user_id"):
                    await session.execute(
                        insert(PaidOrder)
                        .values(order_id=order_id, user_id=str(event["user_id"]))
                        .on_conflict_do_nothing(index_elements=["order_id"])
                    )
            elif event_type in COUPON_FREEING_EVENTS:
                changed = await session.execute(
                    update(Coupon)
                    .where(Coupon.order_id == order_id, Coupon.state == CouponState.LOCKED.value)
                    .values(state=CouponState.AVAILABLE.value, order_id=None, discount=None, locked_at=None)
                )
        return int(getattr(changed, "rowcount", 0) or 0)

    async def issue_compensation(
        self, *, actor: str, template_id: int, user_ids: Sequence[str], reason: str, batch: str
    ) -> list[ClaimedCoupon]:
        """One coupon of a template to each listed user, through the same limits.

        The batch id is the claim's idempotency key, so repeating a batch returns the same coupons.
        """
        issued = []
        refused: dict[str, int] = {}
        try:
            for user_id in dict.fromkeys(user_ids):
                try:
                    issued.append(
                        await self.claim(
                            template_id=template_id, user_id=user_id, key=f"comp:{batch}", compensation=True
                        )
                    )
                except (errors.ClaimLimitReached, IdempotencyKeyReused) as exc:
                    refused[exc.code] = refused.get(exc.code, 0) + 1
        finally:
            # Audited whatever happened: a batch stopped halfway (exhausted, Redis down) is visible to ops,
            # and repeating it with the same Idempotency-Key completes it without issuing twice.
            async with self.sessions.begin() as session:
                await self._audit(
                    session,
                    actor=actor,
                    action="compensate",
                    template_id=template_id,
                    after={"issued": len(issued), "asked": len(user_ids), "refused": refused, "batch": batch},
                    note=reason,
                )
        return issued


def _lines(lines: Sequence[LineIn]) -> list[Line]:
    return [Line(sku=li.sku, sale_id=li.sale_id, unit_price=li.unit_price, quantity=li.quantity) for li in lines]

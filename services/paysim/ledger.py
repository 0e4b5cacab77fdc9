"""The in-memory payment ledger: charges, refunds and the Idempotency-Key records that dedupe them.

Every method is synchronous on purpose: with no await between "is this key known?" and "record the
charge", concurrent requests with one key cannot both charge on the event loop.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.common.idempotency import IdempotencyKeyReused, fingerprint
from services.paysim.errors import PaymentDeclined, PaymentNotFound
from services.paysim.schemas import PaymentRequest

DECLINE_MODULUS = 1000
DECLINE_SUFFIX = 402
MAX_PAYMENTS_PER_ORDER_LISTED = 1000


def is_declined(amount: int) -> bool:
    """The drill rule: an amount ending in 402 is a definitive business refusal."""
    return amount % DECLINE_MODULUS == DECLINE_SUFFIX


@dataclass(slots=True)
class Payment:
    """One charge; `status` moves from succeeded to refunded at most once."""

    payment_id: str
    order_id: str
    amount: int
    currency: str
    provider: str
    created_at: datetime
    charge_key: str
    status: str = "succeeded"
    refunded_at: datetime | None = None

    def as_json(self, *, as_charged: bool = False) -> dict[str, Any]:
        """The payment's JSON; `as_charged` gives the answer of the charge call itself (for replays)."""
        refunded = self.refunded_at is not None and not as_charged
        return {
            "payment_id": self.payment_id,
            "status": "refunded" if refunded else "succeeded",
            "order_id": self.order_id,
            "amount": self.amount,
            "currency": self.currency,
            "provider": self.provider,
            "created_at": self.created_at.isoformat(),
            "refunded_at": self.refunded_at.isoformat() if refunded and self.refunded_at else None,
        }


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What one Idempotency-Key was used for: the request fingerprint and the payment (None: declined)."""

    fingerprint: str
    payment_id: str | None


class PaymentLedger:
    """Bounded in-memory payments of one provider, deduplicated by Idempotency-Key."""

    def __init__(self, *, provider: str, max_payments: int) -> None:
        self.provider = provider
        self.max_payments = max_payments
        self.payments: OrderedDict[str, Payment] = OrderedDict()
        self.by_order: dict[str, list[str]] = {}
        self.keys: OrderedDict[tuple[str, str], KeyRecord] = OrderedDict()

    def charge(self, *, key: str, request: PaymentRequest) -> tuple[Payment, bool]:
        """Charge once per key; returns (payment, replayed). Raises PaymentDeclined or IdempotencyKeyReused."""
        fp = fingerprint(request.model_dump(mode="json"))
        record = self._known_key(("charge", key))
        if record is not None:
            if record.fingerprint != fp:
                raise IdempotencyKeyReused("This Idempotency-Key was used for a different payment")
            if record.payment_id is None:
                raise PaymentDeclined(self._decline_detail(request.amount))
            return self.payments[record.payment_id], True
        if is_declined(request.amount):
            self._remember(("charge", key), KeyRecord(fp, None))
            raise PaymentDeclined(self._decline_detail(request.amount))
        payment = Payment(
            payment_id=f"pay_{os.urandom(12).hex()}",
            order_id=request.order_id,
            amount=request.amount,
            currency=request.currency,
            provider=self.provider,
            created_at=datetime.now(UTC),
            charge_key=key,
        )
        self.payments[payment.payment_id] = payment
        self.by_order.setdefault(payment.order_id, []).append(payment.payment_id)
        self._remember(("charge", key), KeyRecord(fp, payment.payment_id))
        while len(self.payments) > self.max_payments:
            self._forget_oldest()
        return payment, False

    def refund(self, *, key: str, payment_id: str) -> tuple[Payment, bool]:
        """Refund a payment in full; returns (payment, changed). A refunded payment stays refunded."""
        record = self._known_key(("refund", key))
        if record is not None and record.payment_id != payment_id:
            raise IdempotencyKeyReused("This Idempotency-Key was used to refund a different payment")
        payment = self.payments.get(payment_id)
        if payment is None:
            raise PaymentNotFound(f"No payment {payment_id!r} at provider {self.provider!r}")
        changed = payment.refunded_at is None
        if changed:
            payment.status = "refunded"
            payment.refunded_at = datetime.now(UTC)
        if record is None:
            self._remember(("refund", key), KeyRecord(payment_id, payment_id))
        return payment, changed

    def get(self, payment_id: str) -> Payment:
        """One payment, or PaymentNotFound."""
        payment = self.payments.get(payment_id)
        if payment is None:
            raise PaymentNotFound(f"No payment {payment_id!r} at provider {self.provider!r}")
        return payment

    def for_order(self, order_id: str) -> list[Payment]:
        """Every payment recorded for an order, oldest first."""
        ids = self.by_order.get(order_id, [])[:MAX_PAYMENTS_PER_ORDER_LISTED]
        return [self.payments[pid] for pid in ids]

    def _decline_detail(self, amount: int) -> str:
        return f"Provider {self.provider!r} declined the payment of {amount} (drill rule: amount ends in 402)"

    def _known_key(self, slot: tuple[str, str]) -> KeyRecord | None:
        record = self.keys.get(slot)
        if record is not None and record.payment_id is not None and record.payment_id not in self.payments:
            # The payment aged out of the bounded ledger; its key goes with it.
            del self.keys[slot]
            return None
        return record

    def _remember(self, slot: tuple[str, str], record: KeyRecord) -> None:
        self.keys[slot] = record
        while len(self.keys) > 2 * self.max_payments:
            self.keys.popitem(last=False)

    def _forget_oldest(self) -> None:
        _, oldest = self.payments.popitem(last=False)
        ids = self.by_order.get(oldest.order_id)
        if ids is not None:
            ids.remove(oldest.payment_id)
            if not ids:
                del self.by_order[oldest.order_id]
        record = self.keys.get(("charge", oldest.charge_key))
        if record is not None and record.payment_id == oldest.payment_id:
            del self.keys[("charge", oldest.charge_key)]

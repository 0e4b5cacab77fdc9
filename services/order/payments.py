"""Paying through the primary provider with failover to the backup, one circuit breaker per provider."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from prometheus_client import Counter, Enum

from services.order.provider_http import ProviderBroken, ProviderClient, ProviderUnreachable

log = logging.getLogger("order.payments")

PRIMARY = "primary"
BACKUP = "backup"

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

# Attempt outcomes. "error", "timeout" and "unreachable" count against a provider's breaker; a decline does not.
SUCCEEDED = "succeeded"
DECLINED = "declined"
ERROR = "error"
TIMEOUT = "timeout"
CIRCUIT_OPEN = "circuit_open"
UNREACHABLE = "unreachable"
FAILED = "failed"

# Statuses that say "this provider is struggling right now": fail over and feed the breaker.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
MAX_ERROR_TEXT = 300

PAYMENTS = Counter("order_payments_total", "Payment results of charge calls", ["provider", "outcome"])
PAYMENT_ATTEMPTS = Counter("order_payment_attempts_total", "Calls to payment providers", ["provider", "outcome"])
BREAKER_STATE = Enum(
    "order_payment_breaker_state", "Circuit breaker state per provider", ["provider"], states=[CLOSED, OPEN, HALF_OPEN]
)


@dataclass(frozen=True)
class PaymentAttempt:
    """One call to one provider (or one call skipped by an open breaker), to be recorded by the order service."""

    provider: str
    outcome: str  # succeeded | declined | error | timeout | circuit_open | unreachable
    latency_ms: int
    provider_ref: str | None  # the provider's payment_id when succeeded
    error: str | None


@dataclass(frozen=True)
class PaymentResult:
    """What came of a charge: succeeded, declined (definitive), or failed (no provider could take it; retry later)."""

    outcome: str
    provider: str | None
    provider_ref: str | None
    attempts: list[PaymentAttempt]


class CircuitBreaker:
    """Closed -> open after `failure_threshold` consecutive failures; after `reset_timeout_s` one probe may pass.

    The probe's success closes the breaker; its failure opens it again for another `reset_timeout_s`.
    """

    def __init__(
        self, *, failure_threshold: int = 5, reset_timeout_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout_s < 0:
            raise ValueError("reset_timeout_s must not be negative")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.clock = clock
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self._state = CLOSED
        self._probe_in_flight = False

    @property
    def state(self) -> str:
        """closed, open, or half_open (the reset timeout has passed: the next call is a probe)."""
        if self._state == OPEN and self.opened_at is not None and self.clock() - self.opened_at >= self.reset_timeout_s:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go to the provider now? In half-open only one probe is let through at a time."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._probe_in_flight:
            self._state = HALF_OPEN
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        """The provider answered (a charge or a decline): close the breaker."""
        self._state = CLOSED
        self.consecutive_failures = 0
        self.opened_at = None
        self._probe_in_flight = False

    def record_failure(self) -> None:
        """An error, timeout or unreachable provider: count it, and open on the threshold or a failed probe."""
        self.consecutive_failures += 1
        if self._state == HALF_OPEN or (self._state == CLOSED and self.consecutive_failures >= self.failure_threshold):
            self._state = OPEN
            self.opened_at = self.clock()
        self._probe_in_flight = False

    def release(self) -> None:
        """A call ended without a verdict (cancelled): free the probe slot for the next call."""
        self._probe_in_flight = False

    def snapshot(self) -> dict[str, Any]:
        """State, failures and time left open, for ops."""
        state = self.state
        retry_in = None
        if state == OPEN and self.opened_at is not None:
            retry_in = round(max(0.0, self.reset_timeout_s - (self.clock() - self.opened_at)), 3)
        return {
            "state": state,
            "consecutive_failures": self.consecutive_failures,
            "failure_threshold": self.failure_threshold,
            "reset_timeout_s": self.reset_timeout_s,
            "probe_in_flight": self._probe_in_flight,
            "retry_in_s": retry_in,
        }


def _problem_code(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except ValueError:
        return ""
    return str(body.get("code", "")) if isinstance(body, dict) else ""


def _short(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:MAX_ERROR_TEXT] if text else type(exc).__name__


class PaymentRouter:
    """Charges through the primary provider, fails over to the backup, and skips a provider whose breaker is open."""

    def __init__(
        self,
        *,
        primary_url: str,
        backup_url: str,
        timeout_s: float = 2.0,
        failure_threshold: int = 5,
        reset_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls = {PRIMARY: primary_url.rstrip("/"), BACKUP: backup_url.rstrip("/")}
        self.timeout_s = timeout_s
        self.breakers = {
            name: CircuitBreaker(failure_threshold=failure_threshold, reset_timeout_s=reset_timeout_s, clock=clock)
            for name in self.urls
        }
        self.clients = {name: ProviderClient(url, connect_timeout=timeout_s) for name, url in self.urls.items()}
        self._publish_states()

    async def charge(
        self, *, order_id: str, amount: int, currency: str, idempotency_key: str, traceparent: str | None = None
    ) -> PaymentResult:
        """Charge an order: primary first, then backup; a decline is final and never failed over."""
        body = {"order_id": order_id, "amount": amount, "currency": currency}
        headers = {"idempotency-key": idempotency_key}
        if traceparent:
            headers["traceparent"] = traceparent
        attempts: list[PaymentAttempt] = []
        result: PaymentResult | None = None
        for provider in (PRIMARY, BACKUP):
            # The SAME key goes to both providers. They are separate companies, so it only dedupes within one:
            # a timeout (or a 5xx) from the primary may still have charged there. The order service records
            # every attempt, and reconciliation (GET /payments?order_id= at each provider) refunds a double
            # charge. Failing over anyway is the trade we make: a buyer who paid must not be turned away.
            attempt, refused = await self._call(provider, "POST", "/payments", headers, body)
            attempts.append(attempt)
            if attempt.outcome == SUCCEEDED:
                result = PaymentResult(SUCCEEDED, provider, attempt.provider_ref, attempts)
                break
            if attempt.outcome == DECLINED:
                result = PaymentResult(DECLINED, provider, None, attempts)
                break
            if refused:
                # The provider works but refused the request itself (e.g. a key reused with another amount):
                # the backup must not charge what the primary judged wrong.
                result = PaymentResult(FAILED, None, None, attempts)
                break
            if provider == PRIMARY:
                log.warning("payment failover to backup", extra={"order_id": order_id, "primary": attempt.outcome})
        if result is None:
            result = PaymentResult(FAILED, None, None, attempts)
        PAYMENTS.labels(result.provider or "none", result.outcome).inc()
        self._publish_states()
        return result

    async def refund(self, *, provider: str, provider_ref: str, idempotency_key: str) -> bool:
        """Refund a payment in full at the provider that took it; False means "not confirmed, try again later"."""
        if provider not in self.urls:
            raise ValueError(f"unknown payment provider {provider!r}")
        path = f"/payments/{quote(provider_ref, safe='')}/refund"
        attempt, _ = await self._call(provider, "POST", path, {"idempotency-key": idempotency_key}, None)
        self._publish_states()
        if attempt.outcome != SUCCEEDED:
            log.warning(
                "refund not confirmed",
                extra={"provider": provider, "provider_ref": provider_ref, "outcome": attempt.outcome},
            )
        return attempt.outcome == SUCCEEDED

    async def payments_for_order(self, *, provider: str, order_id: str) -> list[dict[str, Any]] | None:
        """What one provider charged for an order (`GET /payments?order_id=`); None when it cannot tell now."""
        try:
            async with asyncio.timeout(self.timeout_s):
                status, raw = await self.clients[provider].request("GET", "/payments", params={"order_id": order_id})
            payments: list[dict[str, Any]] = orjson.loads(raw)
        except (TimeoutError, ProviderUnreachable, ProviderBroken, ValueError):
            return None
        return payments if status == 200 and isinstance(payments, list) else None

    def snapshot(self) -> dict[str, Any]:
        """Per provider: URL, breaker state and consecutive failures."""
        self._publish_states()
        return {name: {"url": self.urls[name], **breaker.snapshot()} for name, breaker in self.breakers.items()}

    async def aclose(self) -> None:
        """Close the providers' idle connections."""
        for client in self.clients.values():
            client.close()

    async def _call(
        self, provider: str, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> tuple[PaymentAttempt, bool]:
        """One call to one provider through its breaker; answers the attempt and whether it was refused as invalid."""
        breaker = self.breakers[provider]
        if not breaker.allow():
            PAYMENT_ATTEMPTS.labels(provider, CIRCUIT_OPEN).inc()
            return PaymentAttempt(provider, CIRCUIT_OPEN, 0, None, "circuit breaker open; provider not called"), False
        start = time.perf_counter()
        answered = False
        try:
            outcome, ref, error, refused = await self._request(provider, method, path, headers, body)
            answered = True
        finally:
            if not answered:
                breaker.release()  # cancelled mid-call: no verdict on the provider
        if outcome in (ERROR, TIMEOUT, UNREACHABLE) and not refused:
            breaker.record_failure()
        else:
            breaker.record_success()
        latency_ms = round((time.perf_counter() - start) * 1000)
        PAYMENT_ATTEMPTS.labels(provider, outcome).inc()
        return PaymentAttempt(provider, outcome, latency_ms, ref, error), refused

    async def _request(
        self, provider: str, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> tuple[str, str | None, str | None, bool]:
        """Send the request under a total deadline; answers (outcome, provider_ref, error, refused)."""
        payload = orjson.dumps(body) if body is not None else b""
        try:
            async with asyncio.timeout(self.timeout_s):
                status, raw = await self.clients[provider].request(method, path, body=payload, headers=headers)
        except ProviderUnreachable as exc:
            # The request never left: certainly not charged.
            return UNREACHABLE, None, _short(exc), False
        except TimeoutError as exc:
            # Sent but unanswered: it may have been charged (reconciliation decides).
            return TIMEOUT, None, f"no answer within {self.timeout_s}s ({type(exc).__name__})", False
        except ProviderBroken as exc:
            return ERROR, None, _short(exc), False
        if status in (200, 201):
            try:
                return SUCCEEDED, str(orjson.loads(raw)["payment_id"]), None, False
            except (ValueError, KeyError, TypeError):
                return ERROR, None, f"HTTP {status} with an unreadable body", False
        code = _problem_code(raw)
        if status == 402:
            return DECLINED, None, code or "PAYMENT_DECLINED", False
        if status >= 500 or status in TRANSIENT_STATUSES:
            return ERROR, None, f"HTTP {status} {code}".strip(), False
        # Any other answer: the provider works but refuses this request (a bug on our side, e.g. a reused key).
        return ERROR, None, f"refused: HTTP {status} {code}".strip(), True

    def _publish_states(self) -> None:
        for name, breaker in self.breakers.items():
            BREAKER_STATE.labels(name).state(breaker.state)

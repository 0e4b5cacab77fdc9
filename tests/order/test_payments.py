"""PaymentRouter against real paysim processes: failover, circuit breakers, timeouts, declines, refunds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.order.payments import CircuitBreaker, PaymentResult, PaymentRouter
from tests.conftest import PaySims, free_port
from tests.paysim.procs import (
    charge_calls_seen,
    payments_for,
    reset_faults,
    set_faults,
)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client for checking what the providers recorded and for injecting faults."""
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture(autouse=True)
async def healthy(http: httpx.AsyncClient, paysim: PaySims) -> None:
    """Every test starts with both providers healthy."""
    await reset_faults(http, paysim.primary, paysim.backup)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def payments(paysim: PaySims, clock: FakeClock) -> AsyncIterator[PaymentRouter]:
    """A router with a short timeout, a breaker that opens after 3 failures and a clock the test controls."""
    router = PaymentRouter(
        primary_url=paysim.primary,
        backup_url=paysim.backup,
        timeout_s=0.5,
        failure_threshold=3,
        reset_timeout_s=10.0,
        clock=clock,
    )
    yield router
    await router.aclose()


def new_order() -> str:
    return f"ord-{uuid.uuid4().hex[:12]}"


async def charge(router: PaymentRouter, order: str, amount: int = 5_000, key: str | None = None) -> PaymentResult:
    return await router.charge(order_id=order, amount=amount, currency="USD", idempotency_key=key or f"order:{order}")


def trail(result: PaymentResult) -> list[tuple[str, str]]:
    return [(a.provider, a.outcome) for a in result.attempts]


async def test_healthy_primary_takes_the_payment(
    http: httpx.AsyncClient, paysim: PaySims, payments: PaymentRouter
) -> None:
    order = new_order()
    result = await charge(payments, order)
    assert (result.outcome, result.provider) == ("succeeded", "primary")
    assert trail(result) == [("primary", "succeeded")]
    charged = await payments_for(http, paysim.primary, order)
    assert [p["payment_id"] for p in charged] == [result.provider_ref]
    assert result.attempts[0].provider_ref == result.provider_ref and result.attempts[0].error is None
    # A repeated charge of the same order replays the same payment.
    again = await charge(payments, order)
    assert again.provider_ref == result.provider_ref
    assert len(await payments_for(http, paysim.primary, order)) == 1


async def test_primary_down_fails_over_to_backup(
    http: httpx.AsyncClient, paysim: PaySims, payments: PaymentRouter
) -> None:
    await set_faults(http, paysim.primary, down=True)
    order = new_order()
    result = await charge(payments, order)
    assert (result.outcome, result.provider) == ("succeeded", "backup")
    assert trail(result) == [("primary", "error"), ("backup", "succeeded")]
    assert "503" in (result.attempts[0].error or "") and "PROVIDER_DOWN" in (result.attempts[0].error or "")
    assert [p["payment_id"] for p in await payments_for(http, paysim.backup, order)] == [result.provider_ref]
    await reset_faults(http, paysim.primary)
    assert await payments_for(http, paysim.primary, order) == []
    assert payments.snapshot()["primary"]["consecutive_failures"] == 1


async def test_both_down_fails_then_a_retry_succeeds_once(
    http: httpx.AsyncClient, paysim: PaySims, payments: PaymentRouter
) -> None:
    await set_faults(http, paysim.primary, down=True)
    await set_faults(http, paysim.backup, down=True)
    order = new_order()
    failed = await charge(payments, order)
    assert (failed.outcome, failed.provider, failed.provider_ref) == ("failed", None, None)
    assert trail(failed) == [("primary", "error"), ("backup", "error")]

    await reset_faults(http, paysim.primary, paysim.backup)
    retry = await charge(payments, order)
    assert (retry.outcome, retry.provider) == ("succeeded", "primary")
    assert len(await payments_for(http, paysim.primary, order)) == 1
    assert await payments_for(http, paysim.backup, order) == []
    snap = payments.snapshot()
    assert (snap["primary"]["consecutive_failures"], snap["backup"]["consecutive_failures"]) == (0, 1)


async def test_breaker_opens_skips_primary_then_a_half_open_probe_closes_it(
    http: httpx.AsyncClient, paysim: PaySims, payments: PaymentRouter, clock: FakeClock
) -> None:
    await set_faults(http, paysim.primary, error_rate=1.0)
    for _ in range(3):
        result = await charge(payments, new_order())
        assert trail(result) == [("primary", "error"), ("backup", "succeeded")]
    assert payments.snapshot()["primary"]["state"] == "open"
    assert payments.snapshot()["backup"]["state"] == "closed"

    # The primary is healthy again, but the breaker keeps traffic off it until the reset timeout.
    await reset_faults(http, paysim.primary)
    calls_before = await charge_calls_seen(http, paysim.primary)
    skipped = [new_order() for _ in range(3)]
    for order in skipped:
        result = await charge(payments, order)
        assert (result.outcome, result.provider) == ("succeeded", "backup")
        assert trail(result) == [("primary", "circuit_open"), ("backup", "succeeded")]
        assert result.attempts[0].latency_ms == 0
    assert await charge_calls_seen(http, paysim.primary) == calls_before
    for order in skipped:
        assert await payments_for(http, paysim.primary, order) == []

    clock.advance(10.0)
    assert payments.snapshot()["primary"]["state"] == "half_open"
    probe = await charge(payments, new_order())
    assert trail(probe) == [("primary", "succeeded")]
    snap = payments.snapshot()["primary"]
    assert (snap["state"], snap["consecutive_failures"]) == ("closed", 0)


async def test_a_failed_probe_opens_the_breaker_again(
    http: httpx.AsyncClient, paysim: PaySims, payments: PaymentRouter, clock: FakeClock
) -> None:
    await set_faults(http, paysim.primary, down=True)
    for _ in range(3):
        await charge(payments, new_order())
    clock.advance(10.0)
    probe = await charge(payments, new_order())
    assert trail(probe) == [("primary", "error"), ("backup", "succeeded")]
    assert payments.snapshot()["primary"]["state"] == "open"
    clock.advance(9.0)  # a fresh reset timeout started with the failed probe
    assert trail(await charge(payments, new_order()))[0] == ("primary", "circuit_open")


async def test_half_open_lets_exactly_one_probe_through(
    http: httpx.AsyncClient, paysim: PaySims, payments: PaymentRouter, clock: FakeClock
) -> None:
    await set_faults(http, paysim.primary, down=True)
    for _ in range(3):
        await charge(payments, new_order())
    await reset_faults(http, paysim.primary)
    await set_faults(http, paysim.primary, latency_ms=200)  # the probe stays in flight while the others arrive
    clock.advance(10.0)
    results = await asyncio.gather(*(charge(payments, new_order()) for _ in range(5)))
    first_attempts = sorted(trail(r)[0] for r in results)
    assert first_attempts == [("primary", "circuit_open")] * 4 + [("primary", "succeeded")]
    assert all(r.outcome == "succeeded" for r in results)
    assert payments.snapshot()["primary"]["state"] == "closed"


async def test_a_slow_primary_times_out_and_fails_over(
    http: httpx.AsyncClient, paysim: PaySims, payments: PaymentRouter
) -> None:
    await set_faults(http, paysim.primary, latency_ms=2_000)
    order = new_order()
    result = await charge(payments, order)
    assert (result.outcome, result.provider) == ("succeeded", "backup")
    assert trail(result) == [("primary", "timeout"), ("backup", "succeeded")]
    assert result.attempts[0].latency_ms >= 400
    await reset_faults(http, paysim.primary)
    # Why the attempt must be recorded: the slow primary did take the money. Reconciliation refunds one side.
    assert len(await payments_for(http, paysim.primary, order)) == 1
    assert len(await payments_for(http, paysim.backup, order)) == 1


async def test_an_unreachable_primary_fails_over(http: httpx.AsyncClient, paysim: PaySims) -> None:
    router = PaymentRouter(primary_url=f"http://127.0.0.1:{free_port()}", backup_url=paysim.backup, timeout_s=0.5)
    try:
        order = new_order()
        result = await charge(router, order)
        assert trail(result) == [("primary", "unreachable"), ("backup", "succeeded")]
        assert result.attempts[0].error
        assert len(await payments_for(http, paysim.backup, order)) == 1
    finally:
        await router.aclose()


async def test_a_decline_is_final_and_not_failed_over(
    http: httpx.AsyncClient, paysim: PaySims, payments: PaymentRouter
) -> None:
    order = new_order()
    for _ in range(4):  # more than the breaker threshold: declines never open it
        result = await charge(payments, order, amount=7_402)
        assert (result.outcome, result.provider, result.provider_ref) == ("declined", "primary", None)
        assert trail(result) == [("primary", "declined")]
    assert await payments_for(http, paysim.backup, order) == []
    assert await payments_for(http, paysim.primary, order) == []
    snap = payments.snapshot()["primary"]
    assert (snap["state"], snap["consecutive_failures"]) == ("closed", 0)


async def test_a_request_refused_as_invalid_is_not_sent_to_the_backup(
    http: httpx.AsyncClient, paysim: PaySims, payments: PaymentRouter
) -> None:
    order = new_order()
    assert (await charge(payments, order, amount=1_000)).outcome == "succeeded"
    # A bug re-using the order's key for another amount: the primary refuses it, the backup never sees it.
    result = await charge(payments, order, amount=2_000)
    assert result.outcome == "failed"
    assert trail(result) == [("primary", "error")]
    assert "IDEMPOTENCY_KEY_REUSED" in (result.attempts[0].error or "")
    assert await payments_for(http, paysim.backup, order) == []
    assert payments.snapshot()["primary"]["consecutive_failures"] == 0


async def test_refund_at_the_provider_that_charged(
    http: httpx.AsyncClient, paysim: PaySims, payments: PaymentRouter
) -> None:
    await set_faults(http, paysim.primary, down=True)
    order = new_order()
    paid = await charge(payments, order)
    assert paid.provider == "backup" and paid.provider_ref
    key = f"refund:{order}"
    assert await payments.refund(provider="backup", provider_ref=paid.provider_ref, idempotency_key=key)
    assert await payments.refund(provider="backup", provider_ref=paid.provider_ref, idempotency_key=key)
    assert [p["status"] for p in await payments_for(http, paysim.backup, order)] == ["refunded"]
    # Unknown at the primary (and the primary is down): not confirmed.
    assert not await payments.refund(provider="primary", provider_ref=paid.provider_ref, idempotency_key=key)
    with pytest.raises(ValueError, match="unknown payment provider"):
        await payments.refund(provider="other", provider_ref="x", idempotency_key=key)


def test_breaker_counts_consecutive_failures_only(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=5.0, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()  # a charge or a decline: the provider answers
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.snapshot()["retry_in_s"] == 5.0
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow()  # one probe at a time
    breaker.release()  # the probe was cancelled: another may go
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.snapshot() == {
        "state": "closed",
        "consecutive_failures": 0,
        "failure_threshold": 3,
        "reset_timeout_s": 5.0,
        "probe_in_flight": False,
        "retry_in_s": None,
    }

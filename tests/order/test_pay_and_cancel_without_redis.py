"""Pay and cancel keep their Idempotency-Key records in the order database: a real order process whose own
Redis server was killed after it started still pays, cancels, replays and refuses reused or in-flight keys.
A pay's answer commits with the paid order, and its steps show on /metrics."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text

from services.common.idempotency import fingerprint
from services.order.config import OrderSettings
from services.order.idempotency import OrderIdempotency
from services.order.service import OrderService
from tests.conftest import (
    PaySims,
    PrivateRedis,
    customer_headers,
    order_processes,
    wait_for,
)
from tests.order.conftest import in_process_settings, unpaid_order
from tests.paysim.procs import payments_for, reset_faults, set_faults

DB_BASE = "orders_noredis"
STREAMS = "test:noredis:no-streams"


@pytest.fixture(scope="module")
def dead_redis_url() -> Iterator[str]:
    """A redis-server of the test's own; the order process connects to it, then it is killed."""
    server = PrivateRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture(scope="module")
def replica(paysim: PaySims, dead_redis_url: str) -> Iterator[str]:
    """One order process started on its own Redis, which is killed before any test runs."""
    env = {
        "REDIS_URL": dead_redis_url,
        "ORDER_PURCHASE_STREAM_REGISTRY": STREAMS,
        "ORDER_EVENTS_STREAM": "test:noredis:order-events",
        "ORDER_PAYSIM_PRIMARY_URL": paysim.primary,
        "ORDER_PAYSIM_BACKUP_URL": paysim.backup,
        "ORDER_PAYMENT_TIMEOUT_SECONDS": "5",
        "ORDER_DB_POOL_SIZE": "4",
        "REPLICA_ID": "noredis-1",
    }
    with order_processes(DB_BASE, env) as urls:
        port = int(dead_redis_url.rsplit(":", 1)[1].split("/")[0])
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], check=False, capture_output=True)
        yield urls[0]


@pytest.fixture(scope="module")
def order_settings(replica: str, paysim: PaySims) -> OrderSettings:
    """The in-process service's settings: the replica's database (migrated once it runs), the suite's Redis."""
    return in_process_settings(DB_BASE, paysim, registry=STREAMS)


@pytest.fixture
async def http(paysim: PaySims) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the process; both providers healthy before and after each test."""
    async with httpx.AsyncClient(timeout=30) as client:
        await reset_faults(client, paysim.primary, paysim.backup)
        yield client
        await reset_faults(client, paysim.primary, paysim.backup)


async def _state(http: httpx.AsyncClient, replica: str, order_id: str, user: str) -> str:
    resp = await http.get(f"{replica}/orders/{order_id}", headers=customer_headers(user))
    assert resp.status_code == 200, resp.text
    state: str = resp.json()["state"]
    return state


async def _post(http: httpx.AsyncClient, url: str, user: str, key: str) -> httpx.Response:
    return await http.post(url, headers=customer_headers(user, key))


async def test_pay_and_cancel_answer_200_with_the_order_service_redis_down_and_replays_get_the_first_answer(
    http: httpx.AsyncClient, replica: str, service: OrderService, dead_redis_url: str
) -> None:
    gone = Redis.from_url(dead_redis_url)
    with pytest.raises(RedisConnectionError):
        await gone.ping()
    await gone.aclose()
    (to_pay, payer), (to_cancel, canceller) = await unpaid_order(service), await unpaid_order(service)

    paid = await _post(http, f"{replica}/orders/{to_pay}/pay", payer, "pay-1")
    cancelled = await _post(http, f"{replica}/orders/{to_cancel}/cancel", canceller, "cancel-1")

    assert (paid.status_code, paid.json()["state"]) == (200, "paid"), paid.text
    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "cancelled"), cancelled.text
    pay_again = await _post(http, f"{replica}/orders/{to_pay}/pay", payer, "pay-1")
    cancel_again = await _post(http, f"{replica}/orders/{to_cancel}/cancel", canceller, "cancel-1")
    assert (pay_again.status_code, pay_again.json()) == (200, paid.json())
    assert (cancel_again.status_code, cancel_again.json()) == (200, cancelled.json())
    ready = await http.get(f"{replica}/healthz/ready")
    assert (ready.status_code, ready.json()["status"]) == (200, "degraded")


async def test_a_key_reused_for_another_order_is_refused_with_idempotency_key_reused_and_changes_nothing(
    http: httpx.AsyncClient, replica: str, service: OrderService
) -> None:
    first, user = await unpaid_order(service)
    second, _ = await unpaid_order(service, user=user)
    assert (await _post(http, f"{replica}/orders/{first}/pay", user, "one-key")).status_code == 200

    reused = await _post(http, f"{replica}/orders/{second}/pay", user, "one-key")

    assert (reused.status_code, reused.json()["code"]) == (422, "IDEMPOTENCY_KEY_REUSED"), reused.text
    assert reused.headers["content-type"].startswith("application/problem+json")
    assert await _state(http, replica, second, user) == "pending_payment"


async def test_a_duplicate_pay_during_the_charge_gets_idempotency_key_in_flight_and_the_order_is_charged_once(
    http: httpx.AsyncClient, replica: str, service: OrderService, paysim: PaySims
) -> None:
    order_id, user = await unpaid_order(service)
    await set_faults(http, paysim.primary, latency_ms=1_500)
    url = f"{replica}/orders/{order_id}/pay"

    first = asyncio.create_task(_post(http, url, user, "double-click"))
    await wait_for(lambda: _claimed(service, user, "double-click"))
    duplicate = await _post(http, url, user, "double-click")
    paid = await first

    assert (duplicate.status_code, duplicate.json()["code"]) == (409, "IDEMPOTENCY_KEY_IN_FLIGHT"), duplicate.text
    assert duplicate.headers["retry-after"] == "1"
    assert (paid.status_code, paid.json()["state"]) == (200, "paid"), paid.text
    assert (await _post(http, url, user, "double-click")).json() == paid.json()
    assert len(await payments_for(http, paysim.primary, order_id)) == 1


async def test_the_same_key_of_two_buyers_pays_each_buyer_own_order(
    http: httpx.AsyncClient, replica: str, service: OrderService
) -> None:
    (a, alice), (b, bob) = await unpaid_order(service), await unpaid_order(service)

    for order_id, user in ((a, alice), (b, bob)):
        resp = await _post(http, f"{replica}/orders/{order_id}/pay", user, "checkout")
        assert (resp.status_code, resp.json()["id"], resp.json()["state"]) == (200, order_id, "paid"), resp.text


async def test_a_refused_pay_frees_its_key_and_an_in_flight_marker_left_by_a_crash_expires(
    http: httpx.AsyncClient, replica: str, service: OrderService
) -> None:
    order_id, user = await unpaid_order(service)
    cancel = f"{replica}/orders/{order_id}/cancel"
    assert (await _post(http, cancel, user, "c")).status_code == 200
    refused = await _post(http, f"{replica}/orders/{order_id}/pay", user, "p")
    assert (refused.status_code, refused.json()["code"]) == (409, "INVALID_ORDER_STATE"), refused.text
    assert await _record(service, user, "p") is None

    other, _ = await unpaid_order(service, user=user)
    await _insert_marker(service, user, "crashed", 3600.0, f"/orders/{other}/pay")
    held = await _post(http, f"{replica}/orders/{other}/pay", user, "crashed")
    assert (held.status_code, held.json()["code"]) == (409, "IDEMPOTENCY_KEY_IN_FLIGHT"), held.text
    await _insert_marker(service, user, "crashed", -1.0, f"/orders/{other}/pay")
    resumed = await _post(http, f"{replica}/orders/{other}/pay", user, "crashed")
    assert (resumed.status_code, resumed.json()["state"]) == (200, "paid"), resumed.text


async def test_a_pay_stores_its_replayable_answer_in_the_commit_that_makes_the_order_paid(
    http: httpx.AsyncClient, replica: str, service: OrderService, paysim: PaySims
) -> None:
    order_id, user = await unpaid_order(service)
    await set_faults(http, paysim.primary, latency_ms=300)
    paying = asyncio.create_task(_post(http, f"{replica}/orders/{order_id}/pay", user, "together"))
    await wait_for(lambda: _claimed(service, user, "together"))
    engine = service.sessions.kw["bind"]
    async with engine.connect() as holder:
        # Hold the key's record: the pay's answer cannot be written until this transaction ends.
        await holder.execute(
            text("SELECT 1 FROM idempotency_records WHERE owner = :o AND key = :k FOR UPDATE"),
            {"o": user, "k": "together"},
        )
        await wait_for(lambda: _a_statement_waits_for_a_lock(service), timeout=30)
        state_while_blocked = await _db_state(service, order_id)
        await holder.rollback()
    paid = await paying

    assert state_while_blocked == "pending_payment"  # not paid while its answer could not be stored
    assert (paid.status_code, paid.json()["state"]) == (200, "paid"), paid.text
    assert await _db_state(service, order_id) == "paid"
    assert (await _record(service, user, "together")) == (200,)
    assert (await _post(http, f"{replica}/orders/{order_id}/pay", user, "together")).json() == paid.json()


async def test_metrics_show_the_steps_of_a_pay_and_the_event_loop_lag(
    http: httpx.AsyncClient, replica: str, service: OrderService
) -> None:
    order_id, user = await unpaid_order(service)
    assert (await _post(http, f"{replica}/orders/{order_id}/pay", user, "metered")).status_code == 200

    metrics = (await http.get(f"{replica}/metrics")).text
    counts = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if "_count" in line}
    for stage in ("connection", "claim", "charge", "settle"):
        assert counts.get(f'order_pay_stage_seconds_count{{stage="{stage}"}}', 0) >= 1, stage
    assert counts.get("event_loop_lag_seconds_count", 0) >= 1


async def _a_statement_waits_for_a_lock(service: OrderService) -> bool:
    async with service.sessions() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def _db_state(service: OrderService, order_id: str) -> str:
    async with service.sessions() as session:
        state = await session.scalar(text("SELECT state FROM orders WHERE id = :id"), {"id": order_id})
    return str(state)


async def test_the_sweep_deletes_expired_records_and_keeps_live_ones(service: OrderService) -> None:
    user = f"sweep-{uuid.uuid4().hex[:8]}"
    await _insert_marker(service, user, "old", -1.0)
    await _insert_marker(service, user, "live", 3600.0)
    store = OrderIdempotency(service.sessions.kw["bind"])

    while await store.sweep_expired():
        pass

    assert await _record(service, user, "old") is None
    assert await _record(service, user, "live") is not None


async def _claimed(service: OrderService, user: str, key: str) -> bool:
    return await _record(service, user, key) is not None


async def _record(service: OrderService, user: str, key: str) -> Any:
    async with service.sessions() as session:
        return (
            await session.execute(
                text("SELECT status FROM idempotency_records WHERE owner = :o AND key = :k"), {"o": user, "k": key}
            )
        ).first()


async def _insert_marker(service: OrderService, user: str, key: str, expires_in: float, path: str = "/") -> None:
    """An in-flight record of a pay of `path`, as a request that died mid-way leaves it."""
    async with service.sessions.begin() as session:
        await session.execute(
            text(
                "INSERT INTO idempotency_records (scope, owner, key, fingerprint, expires_at)"
                " VALUES ('order-pay', :o, :k, :fp, now() + make_interval(secs => :e))"
                " ON CONFLICT (scope, owner, key) DO UPDATE SET expires_at = EXCLUDED.expires_at"
            ),
            {"o": user, "k": key, "e": expires_in, "fp": fingerprint({"path": path})},
        )

"""Pay racing cancel, pay racing pay, charges that land late, claims left behind, and the order history:
two real order processes, real paysim processes, real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from functools import partial
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from services.order.config import OrderSettings
from services.order.creation import OrderCreation
from services.order.main import create_app
from services.order.service import OrderService
from tests.conftest import (
    TEST_REDIS_URL,
    PaySims,
    admin_headers,
    customer_headers,
    db_url_for,
    order_processes,
    wait_for,
)
from tests.paysim.procs import payments_for, reset_faults, set_faults

DB_URL = db_url_for("orders_races")
EVENTS_STREAM = "test:races:order-events"  # nobody consumes these orders' events


def _settings(paysim: PaySims, **overrides: Any) -> OrderSettings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": DB_URL,
        "redis_url": TEST_REDIS_URL,
        "paysim_primary_url": paysim.primary,
        "paysim_backup_url": paysim.backup,
        "purchase_stream_registry": "test:races:no-streams",
        "events_stream": EVENTS_STREAM,
        "payment_timeout_seconds": 5.0,
        "replica_id": "races-in-process",
        **overrides,
    }
    return OrderSettings(**values)


@pytest.fixture(scope="module")
def replicas(paysim: PaySims) -> Iterator[list[str]]:
    """Two order processes on a database of their own, as the stack runs them."""
    env = {
        "ORDER_PURCHASE_STREAM_REGISTRY": "test:races:no-streams",
        "ORDER_EVENTS_STREAM": EVENTS_STREAM,
        "ORDER_PAYSIM_PRIMARY_URL": paysim.primary,
        "ORDER_PAYSIM_BACKUP_URL": paysim.backup,
        "ORDER_PAYMENT_TIMEOUT_SECONDS": "5",
        # PostgreSQL's connections are shared with the rest of the suite (and its max_connections is 100).
        "ORDER_DB_POOL_SIZE": "4",
    }
    with order_processes("orders_races", *({**env, "REPLICA_ID": f"races-{n}"} for n in (1, 2))) as urls:
        yield urls


@pytest.fixture(scope="module")
def order_settings(replicas: list[str], paysim: PaySims) -> OrderSettings:
    """The in-process service's settings: the replicas' database (migrated once they run) and providers."""
    return _settings(paysim, db_pool_size=2)


@pytest.fixture
async def http(paysim: PaySims) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the processes; both providers healthy before and after each test."""
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=None)) as client:
        await reset_faults(client, paysim.primary, paysim.backup)
        yield client
        await reset_faults(client, paysim.primary, paysim.backup)


async def _orders(
    service: OrderService, count: int, price: int = 1_000, deadline_seconds: int | None = None
) -> list[tuple[str, str]]:
    """`count` new unpaid orders, each of its own buyer: [(order id, user id)]."""
    tag = uuid.uuid4().hex[:8]
    events = [
        {
            "reservation_id": f"r-{tag}-{n}",
            "sale_id": 1,
            "user_id": f"buyer-{tag}-{n}",
            "sku": "SKU-RACE",
            "quantity": 1,
            "unit_price": price,
        }
        for n in range(count)
    ]
    creation = service.creation
    if deadline_seconds is not None:
        creation = OrderCreation(
            settings=service.settings.model_copy(update={"payment_deadline_seconds": deadline_seconds}),
            sessions=service.sessions,
            pricing=service.pricing,
        )
    assert await creation.create_orders(events) == count
    async with service.sessions() as session:
        rows = await session.execute(
            text("SELECT id, user_id FROM orders WHERE reservation_id = ANY(:rids)"),
            {"rids": [e["reservation_id"] for e in events]},
        )
        return [(r[0], r[1]) for r in rows]


async def _admin(http: httpx.AsyncClient, url: str, order_id: str) -> dict[str, Any]:
    resp = await http.get(f"{url}/admin/orders/{order_id}", headers=admin_headers())
    assert resp.status_code == 200, resp.text
    detail: dict[str, Any] = resp.json()
    return detail


async def _post(http: httpx.AsyncClient, url: str, user: str, key: str, delay: float = 0.0) -> httpx.Response:
    await asyncio.sleep(delay)
    return await http.post(url, headers=customer_headers(user, key))


async def _pairs(calls: list[tuple[Any, Any]], in_flight: int = 20) -> list[tuple[httpx.Response, httpx.Response]]:
    """Run each pair of calls at the same moment, `in_flight` pairs at a time (the machine is shared)."""
    limit = asyncio.Semaphore(in_flight)

    async def pair(first: Any, second: Any) -> tuple[httpx.Response, httpx.Response]:
        async with limit:
            a, b = await asyncio.gather(first(), second())
            return a, b

    return await asyncio.gather(*(pair(a, b) for a, b in calls))


async def _records(
    http: httpx.AsyncClient, url: str, paysim: PaySims, order_ids: list[str]
) -> list[tuple[dict[str, Any], list[dict[str, object]], list[dict[str, object]]]]:
    """Per order: the order service's record, and what the primary and the backup charged for it."""
    limit = asyncio.Semaphore(20)

    async def one(order_id: str) -> tuple[dict[str, Any], list[dict[str, object]], list[dict[str, object]]]:
        async with limit:
            detail, primary, backup = await asyncio.gather(
                _admin(http, url, order_id),
                payments_for(http, paysim.primary, order_id),
                payments_for(http, paysim.backup, order_id),
            )
            return detail, primary, backup

    return list(await asyncio.gather(*(one(order_id) for order_id in order_ids)))


async def test_200_concurrent_pay_and_cancel_pairs_end_paid_or_cancelled_without_a_charge(
    http: httpx.AsyncClient, replicas: list[str], service: OrderService, paysim: PaySims
) -> None:
    orders = await _orders(service, 200)
    # Each charge is in flight for 200 ms; each cancel comes 0-100 ms after its pay, at the other replica.
    await set_faults(http, paysim.primary, latency_ms=200)
    rng = random.Random(7)
    calls = []
    for n, (order_id, user) in enumerate(orders):
        pay_url = f"{replicas[n % 2]}/orders/{order_id}/pay"
        cancel_url = f"{replicas[(n + 1) % 2]}/orders/{order_id}/cancel"
        delay = rng.uniform(0, 0.1)
        calls.append(
            (
                partial(_post, http, pay_url, user, "pay"),
                partial(_post, http, cancel_url, user, "cancel", delay),
            )
        )
    answers = await _pairs(calls)
    await reset_faults(http, paysim.primary)

    records = await _records(http, replicas[0], paysim, [order_id for order_id, _user in orders])
    in_flight_refusals = 0
    for (pay, cancel), (detail, charged, backup_charged) in zip(answers, records, strict=True):
        assert backup_charged == []
        if detail["state"] == "paid":
            assert pay.status_code == 200, pay.text
            assert cancel.status_code == 409, cancel.text
            assert cancel.json()["code"] in ("PAYMENT_IN_PROGRESS", "INVALID_ORDER_STATE")
            in_flight_refusals += cancel.json()["code"] == "PAYMENT_IN_PROGRESS"
            assert [(c["status"], c["payment_id"]) for c in charged] == [("succeeded", detail["payment_ref"])]
            assert [a["outcome"] for a in detail["attempts"]] == ["succeeded"]
        else:
            assert detail["state"] == "cancelled", detail
            assert (cancel.status_code, cancel.json()["state"]) == (200, "cancelled")
            assert pay.status_code == 409, pay.text
            assert pay.json()["code"] == "INVALID_ORDER_STATE"
            assert charged == [] and detail["attempts"] == []
    assert in_flight_refusals > 0  # the race was run: cancels did arrive while a charge was in flight


async def test_two_concurrent_pays_with_different_keys_charge_once_and_record_one_success(
    http: httpx.AsyncClient, replicas: list[str], service: OrderService, paysim: PaySims
) -> None:
    orders = await _orders(service, 20)
    await set_faults(http, paysim.primary, latency_ms=200)
    calls = [
        (
            partial(_post, http, f"{replicas[0]}/orders/{order_id}/pay", user, "pay-a"),
            partial(_post, http, f"{replicas[1]}/orders/{order_id}/pay", user, "pay-b"),
        )
        for order_id, user in orders
    ]
    answers = await _pairs(calls)
    for (order_id, _user), pair in zip(orders, answers, strict=True):
        assert sorted(a.status_code for a in pair) == [200, 409], [a.text for a in pair]
        refused = next(a for a in pair if a.status_code == 409).json()
        assert refused["code"] in ("PAYMENT_IN_PROGRESS", "INVALID_ORDER_STATE")
        detail = await _admin(http, replicas[0], order_id)
        assert [(a["provider"], a["outcome"]) for a in detail["attempts"]] == [("primary", "succeeded")]
        assert [t["to_state"] for t in detail["history"]] == ["paid"]
        assert len(await payments_for(http, paysim.primary, order_id)) == 1


async def test_neither_the_buyer_nor_ops_can_cancel_an_order_whose_charge_is_in_flight(
    http: httpx.AsyncClient, replicas: list[str], service: OrderService, paysim: PaySims
) -> None:
    [(order_id, user)] = await _orders(service, 1)
    await set_faults(http, paysim.primary, latency_ms=1_500)
    pay = asyncio.create_task(_post(http, f"{replicas[0]}/orders/{order_id}/pay", user, "pay"))

    async def claimed() -> bool:
        return (await _admin(http, replicas[1], order_id))["payment_claimed_at"] is not None

    await wait_for(claimed)
    by_buyer = await _post(http, f"{replicas[1]}/orders/{order_id}/cancel", user, "cancel")
    by_ops = await http.post(f"{replicas[1]}/admin/orders/{order_id}/cancel", headers=admin_headers())
    for refused in (by_buyer, by_ops):
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert (refused.json()["code"], refused.json()["state"]) == ("PAYMENT_IN_PROGRESS", "pending_payment")
    paid = await pay
    assert (paid.status_code, paid.json()["state"]) == (200, "paid")
    detail = await _admin(http, replicas[1], order_id)
    assert (detail["state"], detail["payment_claimed_at"]) == ("paid", None)


async def test_a_payment_begun_before_the_deadline_is_paid_although_the_provider_answers_after_it(
    http: httpx.AsyncClient, replicas: list[str], service: OrderService, paysim: PaySims
) -> None:
    [(order_id, user)] = await _orders(service, 1, deadline_seconds=3)
    # The charge lands after the deadline; the order was claimed before it, so the sweeper (every second on
    # each replica) leaves it alone and the charge makes it paid: nothing to refund.
    await set_faults(http, paysim.primary, latency_ms=4_000)
    paid = await _post(http, f"{replicas[0]}/orders/{order_id}/pay", user, "pay")
    assert paid.status_code == 200, paid.text
    assert paid.json()["state"] == "paid"
    detail = await _admin(http, replicas[1], order_id)
    assert datetime.fromisoformat(detail["paid_at"]) > datetime.fromisoformat(detail["deadline_at"])
    assert [(t["from_state"], t["to_state"]) for t in detail["history"]] == [("pending_payment", "paid")]
    assert [c["status"] for c in await payments_for(http, paysim.primary, order_id)] == ["succeeded"]


@pytest.fixture
async def quick_claims(replicas: list[str], paysim: PaySims) -> AsyncIterator[httpx.AsyncClient]:
    """A third replica, for one test, that takes a payment claim for stale after 0.5 s and refunds at once."""
    settings = _settings(
        paysim,
        db_pool_size=4,
        payment_claim_ttl_seconds=0.5,
        claim_check_interval_seconds=0.2,
        refund_interval_seconds=0.2,
        refund_retry_seconds=0.2,
    )
    application: FastAPI = create_app(settings)
    transport = httpx.ASGITransport(app=application)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=transport, base_url="http://o") as client,
    ):
        yield client


async def test_a_charge_that_lands_after_the_order_closed_is_refunded_on_its_own_and_its_history_kept(
    http: httpx.AsyncClient, quick_claims: httpx.AsyncClient, service: OrderService, paysim: PaySims
) -> None:
    [(order_id, user)] = await _orders(service, 1)
    # The primary charges only after 2.5 s: long past the claim's 0.5 s, when the claim check has asked it,
    # heard of no charge, and given the claim back.
    await set_faults(http, paysim.primary, processing_ms=2_500)
    pay = asyncio.create_task(quick_claims.post(f"/orders/{order_id}/pay", headers=customer_headers(user, "pay")))

    async def claimed() -> bool:
        detail = (await quick_claims.get(f"/admin/orders/{order_id}", headers=admin_headers())).json()
        return detail["payment_claimed_at"] is not None

    await wait_for(claimed, interval=0.02)

    async def cancelled() -> dict[str, Any] | None:
        resp = await quick_claims.post(f"/orders/{order_id}/cancel", headers=customer_headers(user, uuid.uuid4().hex))
        if resp.status_code == 409:
            assert resp.json()["code"] == "PAYMENT_IN_PROGRESS"
            return None
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    closed = await wait_for(cancelled, timeout=10, interval=0.1)
    assert closed["state"] == "cancelled"
    late = await pay
    assert late.status_code == 409, late.text
    assert (late.json()["code"], late.json()["state"]) == ("ORDER_CLOSED", "refund_pending")

    async def refunded() -> dict[str, Any] | None:
        detail = (await quick_claims.get(f"/admin/orders/{order_id}", headers=admin_headers())).json()
        return detail if detail["state"] == "refunded" else None

    detail = await wait_for(refunded)
    assert [c["status"] for c in await payments_for(http, paysim.primary, order_id)] == ["refunded"]
    steps = [(t["from_state"], t["to_state"], t["actor"], t["reason"]) for t in detail["history"]]
    assert steps == [
        ("pending_payment", "cancelled", user, "cancelled_by_buyer"),
        ("cancelled", "refund_pending", user, "charged_after_close"),
        ("refund_pending", "refunded", "system:refunds", "charge_after_close_refunded"),
    ]
    # The refund did not overwrite when the order closed: that stays the cancel's time.
    assert detail["closed_at"] == closed["closed_at"] == detail["history"][0]["at"]
    assert detail["close_reason"] == "cancelled_by_buyer"
    outcomes = [(a["provider"], a["outcome"]) for a in detail["attempts"]]
    assert outcomes == [("primary", "succeeded"), ("primary", "refunded")]


async def test_a_claim_left_by_a_crashed_payer_is_settled_by_what_the_provider_charged(
    http: httpx.AsyncClient, quick_claims: httpx.AsyncClient, service: OrderService, paysim: PaySims
) -> None:
    [(charged_id, charged_user), (uncharged_id, uncharged_user)] = await _orders(service, 2)
    # A payer claimed both orders and died; it had reached the provider for the first one only.
    resp = await http.post(
        f"{paysim.primary}/payments",
        json={"order_id": charged_id, "amount": 1_000, "currency": "USD"},
        headers={"Idempotency-Key": f"order:{charged_id}"},
    )
    assert resp.status_code == 201, resp.text
    async with service.sessions.begin() as session:
        await session.execute(
            text("UPDATE orders SET payment_claimed_at = now(), payment_claim = 'crashed' WHERE id = ANY(:ids)"),
            {"ids": [charged_id, uncharged_id]},
        )

    async def settled() -> bool:
        details = [
            (await quick_claims.get(f"/admin/orders/{o}", headers=admin_headers())).json()
            for o in (charged_id, uncharged_id)
        ]
        return all(d["payment_claimed_at"] is None for d in details)

    await wait_for(settled)
    paid = (await quick_claims.get(f"/orders/{charged_id}", headers=customer_headers(charged_user))).json()
    assert (paid["state"], paid["payment_provider"]) == ("paid", "primary")
    detail = (await quick_claims.get(f"/admin/orders/{charged_id}", headers=admin_headers())).json()
    assert detail["payment_ref"] == resp.json()["payment_id"]
    assert [(t["to_state"], t["actor"]) for t in detail["history"]] == [("paid", "system:payment-claims")]
    # No charge anywhere: the claim is given back and the buyer may cancel (or pay) again.
    cancel = await quick_claims.post(f"/orders/{uncharged_id}/cancel", headers=customer_headers(uncharged_user, "c"))
    assert (cancel.status_code, cancel.json()["state"]) == (200, "cancelled")


async def test_the_admin_view_lists_every_transition_with_its_time_actor_and_reason(
    http: httpx.AsyncClient, replicas: list[str], service: OrderService
) -> None:
    [(order_id, user)] = await _orders(service, 1)
    paid = await _post(http, f"{replicas[0]}/orders/{order_id}/pay", user, "pay")
    assert paid.status_code == 200, paid.text
    refund = await http.post(f"{replicas[1]}/admin/orders/{order_id}/refund", headers=admin_headers("ops-bob"))
    assert refund.status_code == 200, refund.text
    detail = await _admin(http, replicas[0], order_id)
    steps = [(t["from_state"], t["to_state"], t["actor"], t["reason"]) for t in detail["history"]]
    assert steps == [
        ("pending_payment", "paid", user, "payment_succeeded"),
        ("paid", "refunded", "ops-bob", "refunded_by_ops"),
    ]
    paid_at, refunded_at = (datetime.fromisoformat(t["at"]) for t in detail["history"])
    assert datetime.fromisoformat(detail["paid_at"]) == paid_at
    assert paid_at <= refunded_at == datetime.fromisoformat(detail["closed_at"])

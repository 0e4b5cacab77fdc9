"""Paysim over HTTP on real processes: one charge per key, declines, bad input, and fault injection for drills."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import PaySims, admin_headers, customer_headers
from tests.paysim.procs import (
    payments_for,
    reset_faults,
    set_faults,
)


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the providers."""
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture(autouse=True)
async def healthy(http: httpx.AsyncClient, paysim: PaySims) -> None:
    """Every test starts with both providers healthy."""
    await reset_faults(http, paysim.primary, paysim.backup)


def order_id() -> str:
    return f"ord-{uuid.uuid4().hex[:12]}"


def payment(order: str, amount: int = 9_900, currency: str = "USD") -> dict[str, Any]:
    return {"order_id": order, "amount": amount, "currency": currency}


def key_header(key: str | None = None) -> dict[str, str]:
    return {"Idempotency-Key": key or uuid.uuid4().hex}


def assert_problem(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["detail"]


async def test_a_payment_succeeds_and_can_be_read_back(http: httpx.AsyncClient, paysim: PaySims) -> None:
    order = order_id()
    resp = await http.post(f"{paysim.primary}/payments", json=payment(order, 12_345), headers=key_header())
    assert resp.status_code == 201, resp.text
    paid = resp.json()
    assert paid["status"] == "succeeded"
    assert (paid["order_id"], paid["amount"], paid["currency"], paid["provider"]) == (order, 12_345, "USD", "primary")
    assert paid["payment_id"] and paid["created_at"].endswith("+00:00")

    one = await http.get(f"{paysim.primary}/payments/{paid['payment_id']}")
    assert one.status_code == 200
    assert one.json() == paid
    assert await payments_for(http, paysim.primary, order) == [paid]
    # The backup is a different company: it knows nothing of the primary's payments.
    assert await payments_for(http, paysim.backup, order) == []
    assert_problem(await http.get(f"{paysim.backup}/payments/{paid['payment_id']}"), 404, "PAYMENT_NOT_FOUND")


async def test_backup_names_itself(http: httpx.AsyncClient, paysim: PaySims) -> None:
    resp = await http.post(f"{paysim.backup}/payments", json=payment(order_id()), headers=key_header())
    assert resp.status_code == 201, resp.text
    assert resp.json()["provider"] == "backup"


async def test_one_key_sent_20_times_at_once_charges_once(http: httpx.AsyncClient, paysim: PaySims) -> None:
    order = order_id()
    headers = key_header()
    answers = await asyncio.gather(
        *(http.post(f"{paysim.primary}/payments", json=payment(order), headers=headers) for _ in range(20))
    )
    assert {r.status_code for r in answers} == {201}
    assert len({r.text for r in answers}) == 1  # byte-identical answers
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in answers) == 19
    charged = await payments_for(http, paysim.primary, order)
    assert len(charged) == 1
    assert charged[0]["payment_id"] == answers[0].json()["payment_id"]


async def test_same_key_with_another_amount_is_refused(http: httpx.AsyncClient, paysim: PaySims) -> None:
    order = order_id()
    headers = key_header()
    first = await http.post(f"{paysim.primary}/payments", json=payment(order, 1_000), headers=headers)
    assert first.status_code == 201
    again = await http.post(f"{paysim.primary}/payments", json=payment(order, 2_000), headers=headers)
    assert_problem(again, 422, "IDEMPOTENCY_KEY_REUSED")
    charged = await payments_for(http, paysim.primary, order)
    assert [p["amount"] for p in charged] == [1_000]


async def test_amount_ending_in_402_is_declined_and_not_charged(http: httpx.AsyncClient, paysim: PaySims) -> None:
    order = order_id()
    headers = key_header()
    for _ in range(2):  # a replay of a declined key is declined again
        resp = await http.post(f"{paysim.primary}/payments", json=payment(order, 1_402), headers=headers)
        assert_problem(resp, 402, "PAYMENT_DECLINED")
    assert await payments_for(http, paysim.primary, order) == []
    # 1402 is declined, 1403 is not.
    ok = await http.post(f"{paysim.primary}/payments", json=payment(order, 1_403), headers=key_header())
    assert ok.status_code == 201


BAD_BODIES: list[tuple[Any, int, str]] = [
    ({"amount": 0}, 422, "VALIDATION_ERROR"),
    ({"amount": -100}, 422, "VALIDATION_ERROR"),
    ({"amount": 99.5}, 422, "VALIDATION_ERROR"),
    ({"amount": 100.0}, 422, "VALIDATION_ERROR"),
    ({"amount": "100"}, 422, "VALIDATION_ERROR"),
    ({"amount": True}, 422, "VALIDATION_ERROR"),
    ({"amount": 10**12 + 1}, 422, "VALIDATION_ERROR"),
    ({"amount": None}, 422, "VALIDATION_ERROR"),
    ({"currency": "usd"}, 422, "VALIDATION_ERROR"),
    ({"currency": "USDT"}, 422, "VALIDATION_ERROR"),
    ({"currency": None}, 422, "VALIDATION_ERROR"),
    ({"surprise": 1}, 422, "VALIDATION_ERROR"),
]


@pytest.mark.parametrize(("change", "status", "code"), BAD_BODIES)
async def test_bad_input_is_refused_and_charges_nothing(
    http: httpx.AsyncClient, paysim: PaySims, change: dict[str, Any], status: int, code: str
) -> None:
    order = order_id()
    body = {**payment(order), **change}
    resp = await http.post(f"{paysim.primary}/payments", json=body, headers=key_header())
    assert_problem(resp, status, code)
    assert await payments_for(http, paysim.primary, order) == []


@pytest.mark.parametrize("bad_order", ["", "x" * 65, "has space", None, 42])
async def test_bad_order_id_is_refused(http: httpx.AsyncClient, paysim: PaySims, bad_order: Any) -> None:
    resp = await http.post(f"{paysim.primary}/payments", json=payment(bad_order), headers=key_header())
    assert_problem(resp, 422, "VALIDATION_ERROR")


async def test_missing_key_malformed_json_and_non_object_bodies_charge_nothing(
    http: httpx.AsyncClient, paysim: PaySims
) -> None:
    order = order_id()
    url = f"{paysim.primary}/payments"
    assert_problem(await http.post(url, json=payment(order)), 400, "IDEMPOTENCY_KEY_REQUIRED")
    assert_problem(
        await http.post(url, json=payment(order), headers={"Idempotency-Key": "k" * 201}),
        400,
        "IDEMPOTENCY_KEY_REQUIRED",
    )
    raw = f'{{"order_id": "{order}", "amount": 100, "currency": "USD"'
    headers = {**key_header(), "content-type": "application/json"}
    assert_problem(await http.post(url, content=raw, headers=headers), 400, "MALFORMED_JSON")
    assert_problem(await http.post(url, json=[payment(order)], headers=key_header()), 422, "VALIDATION_ERROR")
    assert_problem(await http.post(url, headers=key_header()), 422, "VALIDATION_ERROR")
    assert await payments_for(http, paysim.primary, order) == []


async def test_refund_is_idempotent(http: httpx.AsyncClient, paysim: PaySims) -> None:
    order = order_id()
    charge_key = key_header()
    paid = (await http.post(f"{paysim.primary}/payments", json=payment(order), headers=charge_key)).json()
    url = f"{paysim.primary}/payments/{paid['payment_id']}/refund"
    refund_key = key_header()
    first = await http.post(url, headers=refund_key)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "refunded"
    assert first.json()["refunded_at"]
    again = await http.post(url, headers=refund_key)
    assert again.json() == first.json()
    assert_problem(await http.post(url), 400, "IDEMPOTENCY_KEY_REQUIRED")
    # The refund key belongs to that payment; the charge key still replays the original answer.
    other = (await http.post(f"{paysim.primary}/payments", json=payment(order_id()), headers=key_header())).json()
    reused = await http.post(f"{paysim.primary}/payments/{other['payment_id']}/refund", headers=refund_key)
    assert_problem(reused, 422, "IDEMPOTENCY_KEY_REUSED")
    replay = await http.post(f"{paysim.primary}/payments", json=payment(order), headers=charge_key)
    assert replay.json() == paid
    assert [p["status"] for p in await payments_for(http, paysim.primary, order)] == ["refunded"]
    missing = await http.post(f"{paysim.primary}/payments/pay_nope/refund", headers=key_header())
    assert_problem(missing, 404, "PAYMENT_NOT_FOUND")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_faults_need_the_admin_role(http: httpx.AsyncClient, paysim: PaySims, method: str) -> None:
    url = f"{paysim.primary}/admin/faults"
    body = {"down": True} if method == "PUT" else None
    assert_problem(await http.request(method, url, json=body), 401, "UNAUTHENTICATED")
    assert_problem(await http.request(method, url, json=body, headers=customer_headers("buyer-1")), 403, "FORBIDDEN")
    bad = {"Authorization": "Bearer not-a-token"}
    assert_problem(await http.request(method, url, json=body, headers=bad), 401, "UNAUTHENTICATED")
    state = (await http.get(url, headers=admin_headers())).json()
    assert (state["down"], state["error_rate"], state["latency_ms"]) == (False, 0.0, 0)


async def test_fault_changes_merge_are_validated_and_audited(http: httpx.AsyncClient, paysim: PaySims) -> None:
    url = f"{paysim.backup}/admin/faults"
    for bad in ({"error_rate": 1.5}, {"error_rate": -0.1}, {"latency_ms": -1}, {"latency_ms": 60_001}, {"x": 1}):
        assert_problem(await http.put(url, json=bad, headers=admin_headers()), 422, "VALIDATION_ERROR")
    await set_faults(http, paysim.backup, latency_ms=5)
    await set_faults(http, paysim.backup, error_rate=0.25)
    state = (await http.get(url, headers=admin_headers("ops-bob"))).json()
    assert (state["provider"], state["latency_ms"], state["error_rate"], state["down"]) == ("backup", 5, 0.25, False)
    assert state["updated_by"] == "ops-alice"  # the default admin of tests.conftest.admin_headers
    audit = (await http.get(f"{paysim.backup}/admin/audit", headers=admin_headers())).json()
    assert audit[0]["action"] == "faults.set" and audit[0]["after"]["error_rate"] == 0.25
    assert audit[0]["before"]["latency_ms"] == 5
    assert (await http.get(f"{paysim.backup}/admin/audit", headers=customer_headers("buyer-1"))).status_code == 403


async def test_down_refuses_payments_and_fails_readiness_until_reset(http: httpx.AsyncClient, paysim: PaySims) -> None:
    order = order_id()
    headers = key_header()
    await set_faults(http, paysim.primary, down=True)
    resp = await http.post(f"{paysim.primary}/payments", json=payment(order), headers=headers)
    assert_problem(resp, 503, "PROVIDER_DOWN")
    assert resp.headers["retry-after"] == "1"
    assert_problem(await http.get(f"{paysim.primary}/payments", params={"order_id": order}), 503, "PROVIDER_DOWN")
    ready = await http.get(f"{paysim.primary}/healthz/ready")
    assert_problem(ready, 503, "NOT_READY")
    assert ready.json()["checks"]["provider"].startswith("error")
    assert (await http.get(f"{paysim.primary}/healthz/live")).status_code == 200
    assert (await http.get(f"{paysim.primary}/metrics")).status_code == 200
    assert (await http.get(f"{paysim.backup}/healthz/ready")).status_code == 200

    await reset_faults(http, paysim.primary)
    assert (await http.get(f"{paysim.primary}/healthz/ready")).status_code == 200
    assert await payments_for(http, paysim.primary, order) == []
    # The key was not burned by the outage: the retry charges.
    retry = await http.post(f"{paysim.primary}/payments", json=payment(order), headers=headers)
    assert retry.status_code == 201, retry.text
    assert len(await payments_for(http, paysim.primary, order)) == 1


async def test_error_rate_one_fails_every_call_without_charging(http: httpx.AsyncClient, paysim: PaySims) -> None:
    order = order_id()
    await set_faults(http, paysim.primary, error_rate=1.0)
    for _ in range(5):
        resp = await http.post(f"{paysim.primary}/payments", json=payment(order), headers=key_header())
        assert_problem(resp, 500, "PROVIDER_ERROR")
    await reset_faults(http, paysim.primary)
    assert await payments_for(http, paysim.primary, order) == []


async def test_partial_error_rate_fails_some_calls_and_charges_only_the_rest(
    http: httpx.AsyncClient, paysim: PaySims
) -> None:
    order = order_id()
    await set_faults(http, paysim.primary, error_rate=0.5)
    answers = [
        await http.post(f"{paysim.primary}/payments", json=payment(order), headers=key_header()) for _ in range(40)
    ]
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {201, 500}
    assert 0 < statuses.count(500) < 40  # (0.5 ** 40 odds of a false failure)
    await reset_faults(http, paysim.primary)
    assert len(await payments_for(http, paysim.primary, order)) == statuses.count(201)


async def test_latency_injection_slows_the_answer(http: httpx.AsyncClient, paysim: PaySims) -> None:
    await set_faults(http, paysim.primary, latency_ms=400)
    start = time.perf_counter()
    resp = await http.post(f"{paysim.primary}/payments", json=payment(order_id()), headers=key_header())
    elapsed = time.perf_counter() - start
    assert resp.status_code == 201
    assert elapsed >= 0.3

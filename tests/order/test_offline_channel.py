"""The offline payment channel on a real order process: opened by ops only while both providers are down,
it extends the sale's unpaid orders with instructions, takes offline payments once each, and closes on its
own when a provider answers again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import httpx
import pytest

from services.order.config import OrderSettings
from services.order.service import OrderService
from tests.conftest import (
    PaySims,
    admin_headers,
    customer_headers,
    order_processes,
    wait_for,
)
from tests.order.conftest import in_process_settings, unpaid_order
from tests.paysim.procs import payments_for, reset_faults, set_faults

DB_BASE = "orders_offline"
REGISTRY = "test:offline:no-streams"


@pytest.fixture(scope="module")
def replica(paysim: PaySims) -> Iterator[str]:
    env = {
        "ORDER_PURCHASE_STREAM_REGISTRY": REGISTRY,
        "ORDER_EVENTS_STREAM": "test:offline:order-events",
        "ORDER_EVENTS_STREAM_GROUPS": "",
        "ORDER_PAYSIM_PRIMARY_URL": paysim.primary,
        "ORDER_PAYSIM_BACKUP_URL": paysim.backup,
        "ORDER_OFFLINE_CHECK_SECONDS": "0.2",
        "ORDER_PAYMENT_REMINDER_SECONDS": "0",
        "ORDER_DB_POOL_SIZE": "4",
        "REPLICA_ID": "offline-1",
    }
    with order_processes(DB_BASE, env) as urls:
        yield urls[0]


@pytest.fixture(scope="module")
def order_settings(replica: str, paysim: PaySims) -> OrderSettings:
    """The in-process service creates orders (as purchase events would) in the replica's database."""
    return in_process_settings(DB_BASE, paysim, registry=REGISTRY)


@pytest.fixture
async def http(paysim: PaySims) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        await reset_faults(client, paysim.primary, paysim.backup)
        yield client
        await reset_faults(client, paysim.primary, paysim.backup)


async def test_the_offline_channel_opens_only_with_every_provider_down_and_takes_each_payment_once(
    replica: str, service: OrderService, paysim: PaySims, http: httpx.AsyncClient
) -> None:
    sale_id, other_sale = (int(uuid.uuid4().int % 10**9) + 10**9 for _ in range(2))
    (a, buyer_a), (b, buyer_b), (c, _) = [
        await unpaid_order(service, sale_id=s, unit_price=4_200) for s in (sale_id, sale_id, other_sale)
    ]
    channel_url = f"{replica}/admin/sales/{sale_id}/offline-channel"
    body = {"instructions": "Transfer 42.00 to IBAN XX00 0000, reference = your order id", "extend_minutes": 120}

    refused = await http.post(channel_url, json=body, headers=admin_headers())
    assert refused.status_code == 409 and refused.json()["code"] == "PAYMENT_PROVIDERS_AVAILABLE"
    assert (await http.get(channel_url, headers=admin_headers())).json()["code"] == "NO_OFFLINE_CHANNEL"
    for bad in ({**body, "extend_minutes": 0}, {**body, "instructions": ""}, {"instructions": "x"}):
        assert (await http.post(channel_url, json=bad, headers=admin_headers())).status_code == 422
    shopper = await http.post(channel_url, json=body, headers=customer_headers(buyer_a))
    assert shopper.status_code == 403

    for url in (paysim.primary, paysim.backup):
        await set_faults(http, url, down=True)
    pay = await http.post(f"{replica}/orders/{a}/pay", headers=customer_headers(buyer_a, "pay-a"))
    assert pay.status_code == 503, pay.text
    opened = await http.post(channel_url, json=body, headers=admin_headers())
    assert opened.status_code == 200, opened.text
    assert opened.json()["orders_extended"] == 2 and opened.json()["opened_by"] == "ops-alice"
    again = await http.post(channel_url, json=body, headers=admin_headers())
    assert again.status_code == 409 and again.json()["code"] == "OFFLINE_CHANNEL_OPEN"

    seen = (await http.get(f"{replica}/orders/{a}", headers=customer_headers(buyer_a))).json()
    assert seen["payment_instructions"] == body["instructions"]
    assert datetime.fromisoformat(seen["deadline_at"]) == datetime.fromisoformat(opened.json()["deadline_at"])
    untouched = (await http.get(f"{replica}/admin/orders/{c}", headers=admin_headers())).json()
    assert untouched["payment_instructions"] is None
    # An order created while the channel is open is extended by the channel job.
    d, buyer_d = await unpaid_order(service, sale_id=sale_id, unit_price=4_200)

    async def extended(order_id: str, user: str) -> bool:
        got = (await http.get(f"{replica}/orders/{order_id}", headers=customer_headers(user))).json()
        return bool(got["payment_instructions"])

    await wait_for(lambda: extended(d, buyer_d))

    paid_url = f"{replica}/admin/orders/{a}/offline-payment"
    first = await http.post(paid_url, json={"reference": "BANK-0001"}, headers=admin_headers())
    assert first.status_code == 200, first.text
    assert first.json()["state"] == "paid" and first.json()["payment_provider"] == "offline"
    replay = await http.post(paid_url, json={"reference": "BANK-0001"}, headers=admin_headers())
    assert replay.status_code == 200 and replay.json()["paid_at"] == first.json()["paid_at"]
    other = await http.post(paid_url, json={"reference": "BANK-9999"}, headers=admin_headers())
    assert other.status_code == 409 and other.json()["code"] == "OFFLINE_PAYMENT_CONFLICT"
    no_channel = await http.post(
        f"{replica}/admin/orders/{c}/offline-payment", json={"reference": "BANK-0002"}, headers=admin_headers()
    )
    assert no_channel.status_code == 409 and no_channel.json()["code"] == "NO_OFFLINE_CHANNEL"
    blank = await http.post(
        f"{replica}/admin/orders/{b}/offline-payment", json={"reference": ""}, headers=admin_headers()
    )
    assert blank.status_code == 422
    detail = (await http.get(f"{replica}/admin/orders/{a}", headers=admin_headers())).json()
    assert [(h["to_state"], h["actor"], h["reason"]) for h in detail["history"]][-1] == (
        "paid",
        "ops-alice",
        "paid_offline",
    )
    assert [(t["provider"], t["outcome"]) for t in detail["attempts"]][-1] == ("offline", "succeeded")

    # A provider answers again: the channel closes on its own, and the extended order pays as usual.
    await reset_faults(http, paysim.primary, paysim.backup)

    async def closed() -> bool:
        return bool((await http.get(channel_url, headers=admin_headers())).json()["closed_at"])

    await wait_for(closed)
    assert (await http.get(channel_url, headers=admin_headers())).json()["closed_by"] == "system:offline-channel"
    pay_b = await http.post(f"{replica}/orders/{b}/pay", headers=customer_headers(buyer_b, "pay-b"))
    assert pay_b.status_code == 200, pay_b.text
    for url in (paysim.primary, paysim.backup):
        assert await payments_for(http, url, a) == []  # paid offline only: no provider charged it

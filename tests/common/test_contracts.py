"""The contracts between services hold: what the purchase and claim scripts write matches the catalog, the
event types consumers handle and scripts write are event types, the purchase scripts answer only with
purchase decisions, and docs/events.md names everything the catalog declares. Real Redis, the flashsale app
in-process, the coupon claim scripts."""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from services.common.contracts import (
    ALERTS_STREAM,
    EVENT_VERSIONS,
    STREAMS,
    ConsumerGroup,
    ContractViolation,
    EventType,
    PurchaseDecision,
    catalog,
    claim_stream,
    encode_event,
    purchase_stream,
    sale_alert_stream,
    validate_entry,
)
from services.coupon.recovery import EVENT_OF_ORDER_STATE
from services.coupon.service import COUPON_FREEING_EVENTS
from services.coupon.store import ClaimStore, claim_idempotency_key, claims_key, template_key
from services.flashsale.events import ORDER_EVENT_HANDLERS
from services.flashsale.store import StockStore, job_lock_key, sale_key
from services.inventory.models import AlertEvent
from services.order.states import EVENT_OF
from tests.conftest import ROOT, admin_headers, live_sale, token, wait_for

LUA = {path.name: path.read_text() for path in ROOT.glob("services/*/lua/*.lua")}
EVENTS_DOC = (ROOT / "docs" / "events.md").read_text()


async def validated_entries(redis: Redis, spec: catalog.StreamSpec, stream: str) -> list[dict[str, Any]]:
    """Every entry's payload with its type, each validated against `spec` (raises on the first that is not)."""
    return [{"type": fields["type"], **validate_entry(spec, fields)} for _id, fields in await redis.xrange(stream)]


def _types(entries: list[dict[str, Any]]) -> list[str]:
    return [str(e.get("type")) for e in entries]


# ---------------------------------------------------------------- the catalog, the code and the document


def test_every_event_type_has_a_version_and_a_stream_that_carries_it() -> None:
    carried = {event for spec in STREAMS for event in spec.payloads}
    assert carried == set(EventType)
    assert set(EVENT_VERSIONS) == set(EventType)
    assert all(version >= 1 for version in EVENT_VERSIONS.values())


def test_the_event_types_consumers_handle_and_producers_name_are_event_types() -> None:
    handled = {
        "flashsale on {orders}:events": set(ORDER_EVENT_HANDLERS),
        "coupon on {orders}:events": set(COUPON_FREEING_EVENTS) | {EventType.ORDER_PAID},
        "coupon recovery": set(EVENT_OF_ORDER_STATE.values()),
        "order state machine": set(EVENT_OF.values()),
        "inventory alert outbox": {event.value for event in AlertEvent},
    }
    # Lua writes its types as literals: XADD key '*' 'type' '<type>' ...
    for name, source in LUA.items():
        handled[name] = set(re.findall(r"'XADD', KEYS\[\d+\], '\*', 'type', '([^']+)'", source))
    for where, types in handled.items():
        unknown = {t for t in types if t not in set(EventType)}
        assert not unknown, f"{where} names event types the contract does not have: {unknown}"
    order_events = set(catalog.ORDER_EVENTS.payloads)
    assert set(ORDER_EVENT_HANDLERS) <= order_events and order_events >= COUPON_FREEING_EVENTS
    assert {t for n in ("purchase.lua", "claim.lua", "count_again.lua") for t in handled[n]} == {
        EventType.PURCHASE_RESERVED,
        EventType.STOCK_LOW,
        EventType.SALE_SOLD_OUT,
        EventType.COUPON_CLAIMED,
    }


def test_the_purchase_scripts_answer_only_with_purchase_decisions() -> None:
    answers = {
        kind for name in ("purchase.lua", "replay.lua") for kind in re.findall(r"return \{'([A-Z_]+)'", LUA[name])
    }
    assert answers == set(PurchaseDecision)


def test_docs_name_every_stream_group_event_and_payload() -> None:
    named = set(re.findall(r"`([^`]+)`", EVENTS_DOC))
    expected = {spec.name for spec in STREAMS} | {spec.registry for spec in STREAMS if spec.registry}
    expected |= set(EventType) | set(ConsumerGroup)
    expected |= {model.__name__ for spec in STREAMS for models in spec.payloads.values() for model in models}
    assert expected - named == set()


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"type": "coupon.taken", "v": "1", "data": "{}"}, "unknown event type"),
        ({"type": "order.paid", "v": "1", "data": "{}"}, "does not carry"),
        ({"type": "coupon.claimed", "v": "2", "data": "{}"}, "at version"),
        ({**encode_event(EventType.COUPON_CLAIMED, {"coupon_id": "c", "user_id": "u"})}, "does not match"),
        (
            encode_event(
                EventType.COUPON_CLAIMED, {"coupon_id": "c", "template_id": "7", "user_id": "u", "claimed_at_ms": 1}
            ),
            "does not match",
        ),
        (
            encode_event(
                EventType.COUPON_CLAIMED,
                {"coupon_id": "c", "template_id": 7, "user_id": "u", "claimed_at_ms": 1, "note": "undocumented"},
            ),
            "does not match",
        ),
    ],
)
def test_an_entry_that_breaks_its_contract_is_refused(fields: dict[str, str], why: str) -> None:
    with pytest.raises(ContractViolation, match=why):
        validate_entry(catalog.COUPON_CLAIMS, fields)


# ---------------------------------------------------------------- flashsale: the purchase script and the alerts


async def _buy(client: httpx.AsyncClient, sale_id: int, user: str, body: dict[str, Any], roles: list[str]) -> None:
    headers = {"Authorization": f"Bearer {token(user, roles)}", "Idempotency-Key": f"k-{user}"}
    resp = await client.post(f"/sales/{sale_id}/purchase", json=body, headers=headers)
    assert resp.status_code == 202, resp.text


async def test_every_entry_a_sale_writes_matches_its_contract(
    client: httpx.AsyncClient, app: FastAPI, redis: Redis
) -> None:
    # 4 units, threshold 50%: the second unit crosses it, the fourth sells out.
    sale = await live_sale(client, quantity=4, per_user_limit=4, low_stock_threshold_pct=50)
    sale_id = sale["id"]
    await _buy(client, sale_id, "contract-plain", {"quantity": 1}, ["customer"])
    await _buy(client, sale_id, "contract-member", {"quantity": 2, "coupon_ids": ["CP-1"]}, ["customer", "member"])
    await _buy(client, sale_id, "contract-last", {"quantity": 1}, ["customer"])

    purchases = await validated_entries(redis, catalog.PURCHASES, purchase_stream(sale_id))
    assert [(p["user_id"], p["quantity"], p.get("coupon_ids"), p.get("member")) for p in purchases] == [
        ("contract-plain", 1, None, None),
        ("contract-member", 2, ["CP-1"], True),
        ("contract-last", 1, None, None),
    ]
    assert {(p["sale_id"], p["unit_price"], p["currency"]) for p in purchases} == {(sale_id, sale["price"], "USD")}

    # Redis now says it could sell one unit more than the sale has: the reconciliation reports the drift.
    await redis.hincrby(sale_key(sale_id), "remaining", 1)
    try:
        await redis.delete(job_lock_key("reconcile"))  # the app's own periodic run holds the lease
        await app.state.reconciler.reconcile_periodically()
    finally:
        await redis.hincrby(sale_key(sale_id), "remaining", -1)
    sale_alerts = await validated_entries(redis, catalog.SALE_ALERTS, sale_alert_stream(sale_id))
    assert _types(sale_alerts) == ["stock.low", "sale.sold_out", "reconciliation.drift"]
    assert (sale_alerts[0]["remaining"], sale_alerts[0]["paused"], sale_alerts[2]["drift"]) == (1, 0, 1)

    async def relayed() -> list[dict[str, Any]] | None:
        found = [
            e for e in await validated_entries(redis, catalog.ALERTS, ALERTS_STREAM) if e.get("sale_id") == sale_id
        ]
        return found if len(found) == 3 else None

    alerts = await wait_for(relayed)
    assert sorted(_types(alerts)) == sorted(_types(sale_alerts))
    assert all(a["id"].startswith(f"{sale_id}-") and a["v"] == 1 for a in alerts)


async def test_the_purchase_script_answers_with_purchase_decisions(client: httpx.AsyncClient, app: FastAPI) -> None:
    store: StockStore = app.state.service.core.store
    sale = await live_sale(client, quantity=3, per_user_limit=2)
    paused = await live_sale(client, quantity=3, per_user_limit=2)
    assert (await client.post(f"/admin/sales/{paused['id']}/pause", headers=admin_headers())).status_code == 200

    async def buy(sale_id: int, user: str, quantity: int, key: str, fingerprint: str = "fp") -> PurchaseDecision:
        outcome = await store.reserve_stock(
            sale_id=sale_id,
            user_id=user,
            quantity=quantity,
            request_fingerprint=fingerprint,
            idempotency=key,
            reservation_id=os.urandom(16).hex(),
            idempotency_ttl=60,
            reserved_at="2030-01-01T00:00:00+00:00",
        )
        return PurchaseDecision(outcome.kind)

    async def stored(user: str, key: str, fingerprint: str = "fp") -> PurchaseDecision:
        outcome = await store.stored_answer(
            sale_id=sale["id"], user_id=user, idempotency=key, request_fingerprint=fingerprint
        )
        return PurchaseDecision(outcome.kind)

    answers = [
        await buy(sale["id"], "pd-a", 2, "k1"),
        await buy(sale["id"], "pd-a", 2, "k1"),
        await buy(sale["id"], "pd-a", 2, "k1", fingerprint="other body"),
        await buy(sale["id"], "pd-a", 1, "k2"),
        await buy(sale["id"], "pd-b", 2, "k1"),
        await buy(sale["id"], "pd-b", 1, "k2"),
        await buy(sale["id"], "pd-c", 1, "k1"),
        await buy(paused["id"], "pd-a", 1, "k1"),
        await buy(2_000_000_000, "pd-a", 1, "k1"),
        await stored("pd-a", "k1"),
        await stored("pd-a", "k1", fingerprint="other body"),
        await stored("pd-a", "never-used"),
    ]
    assert answers == [
        PurchaseDecision.OK,
        PurchaseDecision.REPLAY,
        PurchaseDecision.KEY_REUSED,
        PurchaseDecision.LIMIT,
        PurchaseDecision.INSUFFICIENT,
        PurchaseDecision.OK,
        PurchaseDecision.SOLD_OUT,
        PurchaseDecision.NOT_LIVE,
        PurchaseDecision.NOT_FOUND,
        PurchaseDecision.REPLAY,
        PurchaseDecision.KEY_REUSED,
        PurchaseDecision.NONE,
    ]


# ---------------------------------------------------------------- coupon: the claim scripts


async def test_claims_written_by_both_claim_scripts_match_their_contract(redis: Redis) -> None:
    template_id = 880_777
    config = {
        "incarnation": "1",
        "kind": "fixed_off",
        "state": "active",
        "total": 5,
        "limit": 2,
        "starts": "",
        "ends": "",
    }
    store = ClaimStore(redis)
    await redis.delete(template_key(template_id), claims_key(template_id), claim_stream(template_id))
    await store.load_template(template_id=template_id, config=config)
    try:
        result = await store.claim(template_id=template_id, user_id="claimer", coupon_id="cp-first", key="k", ttl=60)
        assert result[0] == "OK"
        assert await store.count_again(template_id=template_id, claims=[("cp-lost", "claimer", 1_700_000_000_000)]) == 1
        claims = await validated_entries(redis, catalog.COUPON_CLAIMS, claim_stream(template_id))
        assert [(c["coupon_id"], c["template_id"], c["user_id"]) for c in claims] == [
            ("cp-first", template_id, "claimer"),
            ("cp-lost", template_id, "claimer"),
        ]
        assert claims[1]["claimed_at_ms"] == 1_700_000_000_000
    finally:
        keys = [template_key(template_id), claims_key(template_id), claim_stream(template_id)]
        await redis.delete(*keys, claim_idempotency_key(template_id, "claimer", "k"))


def test_an_entry_encoded_for_a_type_carries_its_version() -> None:
    fields = encode_event(EventType.ORDER_PAID, {"order_id": "o"})
    assert (fields["type"], fields["v"], orjson.loads(fields["data"])) == ("order.paid", "1", {"order_id": "o"})

"""The coupon service over HTTP with real Redis and PostgreSQL: claims under a crowd, wallets, quotes, locks."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from services.common.contracts import ORDER_EVENTS_STREAM, EventType, encode_event
from services.common.migrate import upgrade
from services.coupon.config import CouponSettings
from services.coupon.main import create_app
from services.coupon.store import claim_idempotency_key, claims_key, template_key
from tests.conftest import (
    TEST_REDIS_URL,
    admin_headers,
    customer_headers,
    db_name_for,
    db_url_for,
    drop_database,
    token,
    wait_for,
)
from tests.coupon.test_claim_resend import FlakyScript

COUPON_DB_URL = db_url_for("coupons")
TIERS = [{"spend": 30_000, "off": 5_000}, {"spend": 50_000, "off": 10_000}, {"spend": 80_000, "off": 18_000}]


@pytest.fixture(scope="module")
async def coupon_app(redis: Redis) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The coupon service in-process, and a client of it."""
    await drop_database(db_name_for("coupons"))
    await asyncio.to_thread(upgrade, "coupon", COUPON_DB_URL)
    settings = CouponSettings(env="test", database_url=COUPON_DB_URL, redis_url=TEST_REDIS_URL, replica_id="cp-test")
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://coupon") as client:
            yield application, client


@pytest.fixture(scope="module")
def coupons(coupon_app: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    """A client of the coupon service in-process."""
    return coupon_app[1]


async def _template(coupons: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"name": "test coupon", "kind": "fixed_off", "amount_off": 1_000, "total_quantity": 100, **fields}
    resp = await coupons.post("/admin/templates", json=body, headers=admin_headers())
    assert resp.status_code == 201, resp.text
    template: dict[str, Any] = resp.json()
    return template


async def _claim(coupons: httpx.AsyncClient, template_id: int, user: str, key: str = "k") -> httpx.Response:
    return await coupons.post(f"/templates/{template_id}/claim", headers=customer_headers(user, key))


async def _stats(coupons: httpx.AsyncClient, template_id: int) -> dict[str, Any]:
    resp = await coupons.get(f"/admin/templates/{template_id}/stats", headers=admin_headers())
    assert resp.status_code == 200, resp.text
    stats: dict[str, Any] = resp.json()
    return stats


async def test_10000_concurrent_claims_for_1000_coupons_from_4000_users(coupons: httpx.AsyncClient) -> None:
    template = await _template(coupons, total_quantity=1_000, per_user_limit=1)
    gate = asyncio.Semaphore(300)

    async def claim(n: int) -> tuple[str, httpx.Response]:
        user = f"crowd-{n % 4_000}"
        async with gate:
            return user, await _claim(coupons, template["id"], user, key=f"attempt-{n}")

    results = await asyncio.gather(*(claim(n) for n in range(10_000)))
    won = [(user, r.json()["coupon_id"]) for user, r in results if r.status_code == 201]
    assert len(won) == 1_000, Counter((r.status_code, r.text[:120]) for _u, r in results).most_common(3)
    assert len({user for user, _ in won}) == 1_000  # nobody holds two
    assert len({cid for _, cid in won}) == 1_000
    codes = Counter(r.json()["code"] for _u, r in results if r.status_code != 201)
    assert set(codes) <= {"COUPONS_EXHAUSTED", "CLAIM_LIMIT_REACHED"}, codes

    async def all_in_wallets() -> bool:
        return bool((await _stats(coupons, template["id"]))["in_wallets"] == 1_000)

    await wait_for(all_in_wallets)
    assert (await _stats(coupons, template["id"]))["claimed"] == 1_000


async def test_a_claim_whose_answer_was_lost_is_in_the_wallet_when_answered(
    coupon_app: tuple[FastAPI, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    application, coupons = coupon_app
    template = await _template(coupons, total_quantity=5)
    flaky = FlakyScript.around(application.state.service.store, monkeypatch, "answer lost")
    resp = await _claim(coupons, template["id"], "lost-1")
    assert resp.status_code == 201, resp.text
    assert flaky.calls == 2
    # Its own first call ran: a new claim, written to the wallet now, not only later from the stream.
    wallet = (await coupons.get("/wallet", headers=customer_headers("lost-1"))).json()
    assert [c["coupon_id"] for c in wallet] == [resp.json()["coupon_id"]]
    assert (await _stats(coupons, template["id"]))["claimed"] == 1


async def test_claim_replay_gives_the_same_coupon_and_limits_hold(coupons: httpx.AsyncClient) -> None:
    template = await _template(coupons, total_quantity=5, per_user_limit=2)
    first = await _claim(coupons, template["id"], "rep-1", key="same")
    again = await _claim(coupons, template["id"], "rep-1", key="same")
    assert first.status_code == again.status_code == 201
    assert first.json()["coupon_id"] == again.json()["coupon_id"]
    assert (await _claim(coupons, template["id"], "rep-1", key="second")).status_code == 201
    third = await _claim(coupons, template["id"], "rep-1", key="third")
    assert third.status_code == 403
    assert third.json()["code"] == "CLAIM_LIMIT_REACHED"
    wallet = (await coupons.get("/wallet", headers=customer_headers("rep-1"))).json()
    assert [c["state"] for c in wallet] == ["available", "available"]
    assert wallet[0]["template"]["amount_off"] == 1_000


@pytest.mark.parametrize(
    "fields",
    [
        {"amount_off": -1},
        {"kind": "percent_off", "percent_bp": 10_001},
        {"kind": "percent_off", "percent_bp": 0},
        {"kind": "tiered", "tiers": [TIERS[1], TIERS[0]]},
        {"kind": "tiered", "tiers": [{"spend": 30_000, "off": 5_000}, {"spend": 50_000, "off": 4_000}]},
        {"kind": "tiered", "tiers": []},
        {"total_quantity": 0},
        {"kind": "mystery"},
        {"amount_off": 10.5},
        {"scope": "skus"},
        {"valid_from": "2030-01-02T00:00:00+00:00", "valid_until": "2030-01-01T00:00:00+00:00"},
    ],
)
async def test_bad_templates_are_refused_and_nothing_is_created(
    coupons: httpx.AsyncClient, fields: dict[str, Any]
) -> None:
    before = len((await coupons.get("/admin/templates", headers=admin_headers())).json())
    body = {"name": "bad", "kind": "fixed_off", "amount_off": 1_000, "total_quantity": 100, **fields}
    resp = await coupons.post("/admin/templates", json=body, headers=admin_headers())
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == "VALIDATION_ERROR"
    assert len((await coupons.get("/admin/templates", headers=admin_headers())).json()) == before


async def test_unknown_template_paused_and_closed_windows_are_refused(coupons: httpx.AsyncClient) -> None:
    unknown = await _claim(coupons, 987_654, "u")
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "TEMPLATE_NOT_FOUND"
    now = datetime.now(UTC)
    closed = await _template(
        coupons,
        valid_from=(now - timedelta(days=2)).isoformat(),
        valid_until=(now - timedelta(days=1)).isoformat(),
    )
    late = await _claim(coupons, closed["id"], "u")
    assert late.status_code == 423
    assert late.json()["code"] == "CLAIM_WINDOW_CLOSED"
    paused = await _template(coupons)
    assert (await coupons.post(f"/admin/templates/{paused['id']}/pause", headers=admin_headers())).status_code == 200
    assert (await _claim(coupons, paused["id"], "u")).json()["code"] == "CLAIM_WINDOW_CLOSED"
    assert (await _stats(coupons, closed["id"]))["claimed"] == 0
    assert (await _stats(coupons, paused["id"]))["claimed"] == 0
    assert (await coupons.post(f"/admin/templates/{paused['id']}/resume", headers=admin_headers())).status_code == 200
    assert (await _claim(coupons, paused["id"], "u")).status_code == 201


async def test_admin_routes_need_the_admin_role(coupons: httpx.AsyncClient) -> None:
    body = {"name": "x", "kind": "fixed_off", "amount_off": 1, "total_quantity": 1}
    assert (await coupons.post("/admin/templates", json=body, headers=customer_headers("m"))).status_code == 403
    assert (await coupons.post("/admin/templates", json=body)).status_code == 401
    assert (await coupons.get("/wallet")).status_code == 401


async def _quote(coupons: httpx.AsyncClient, user: str, lines: list[dict[str, Any]], ids: Any = None) -> dict[str, Any]:
    resp = await coupons.post("/quote", json={"lines": lines, "coupon_ids": ids}, headers=customer_headers(user))
    assert resp.status_code == 200, resp.text
    quote: dict[str, Any] = resp.json()
    return quote


def _line(amount: int, sku: str = "SKU-A", sale_id: int | None = None) -> dict[str, Any]:
    return {"sku": sku, "sale_id": sale_id, "unit_price": amount, "quantity": 1}


async def test_quote_with_tiers_best_pick_and_reasons(coupons: httpx.AsyncClient) -> None:
    tiered = await _template(coupons, kind="tiered", amount_off=0, tiers=TIERS, stacking_group="store")
    flat = await _template(coupons, kind="fixed_off", amount_off=2_000, min_spend=20_000, stacking_group="store")
    sku_only = await _template(coupons, kind="no_threshold", amount_off=500, scope="skus", scope_skus=["SKU-B"])
    ids = {}
    for t in (tiered, flat, sku_only):
        ids[t["id"]] = (await _claim(coupons, t["id"], "quoter", key=f"q-{t['id']}")).json()["coupon_id"]
    await wait_for(lambda: _wallet_size(coupons, "quoter", 3))

    best = await _quote(coupons, "quoter", [_line(60_000)])
    assert best["subtotal"] == 60_000
    assert [d["coupon_id"] for d in best["discounts"]] == [ids[tiered["id"]]]  # 100.00 beats 20.00 in one group
    assert (best["discount"], best["total"]) == (10_000, 50_000)
    assert {r["code"] for r in best["rejections"]} == {"OUT_OF_SCOPE"}

    chosen = await _quote(coupons, "quoter", [_line(25_000)], ids=[ids[tiered["id"]], ids[flat["id"]]])
    codes = {r["coupon_id"]: r["code"] for r in chosen["rejections"]}
    assert codes[ids[tiered["id"]]] == "BELOW_THRESHOLD"
    assert chosen["total"] == 23_000
    both = await _quote(coupons, "quoter", [_line(30_000), _line(1_000, sku="SKU-B")])
    assert both["total"] == 31_000 - 5_000 - 500
    assert await _quote(coupons, "quoter", [_line(60_000)]) == best  # deterministic


async def _wallet_size(coupons: httpx.AsyncClient, user: str, n: int) -> bool:
    return len((await coupons.get("/wallet", headers=customer_headers(user))).json()) >= n


async def _lock(coupons: httpx.AsyncClient, order_id: str, user: str, ids: list[str], amount: int) -> dict[str, Any]:
    body = {"order_id": order_id, "user_id": user, "lines": [_line(amount)], "coupon_ids": ids}
    resp = await coupons.post("/admin/locks", json=body, headers=admin_headers("order-service"))
    assert resp.status_code == 200, resp.text
    locked: dict[str, Any] = resp.json()
    return locked


async def test_two_orders_racing_for_one_coupon_one_wins_and_events_use_or_free_it(
    coupons: httpx.AsyncClient, redis: Redis
) -> None:
    template = await _template(coupons, amount_off=1_500)
    cid = (await _claim(coupons, template["id"], "racer")).json()["coupon_id"]
    await wait_for(lambda: _wallet_size(coupons, "racer", 1))
    a, b = await asyncio.gather(
        _lock(coupons, "order-a", "racer", [cid], 10_000), _lock(coupons, "order-b", "racer", [cid], 10_000)
    )
    winners = [q for q in (a, b) if q["discounts"]]
    losers = [q for q in (a, b) if not q["discounts"]]
    assert len(winners) == len(losers) == 1
    assert winners[0]["total"] == 8_500
    assert losers[0]["total"] == 10_000
    assert losers[0]["rejections"][0]["code"] == "ALREADY_USED"
    winner = "order-a" if a["discounts"] else "order-b"
    assert (await _lock(coupons, winner, "racer", [cid], 10_000)) == winners[0]  # repeat: same answer

    async def state_is(state: str) -> bool:
        wallet = (await coupons.get("/wallet", headers=customer_headers("racer"))).json()
        return bool(wallet[0]["state"] == state)

    assert await state_is("locked")
    for _ in range(2):  # delivered twice: released once, no harm
        expired = encode_event(EventType.ORDER_EXPIRED, {"order_id": winner, "user_id": "racer"})
        await redis.xadd(ORDER_EVENTS_STREAM, expired)
    await wait_for(lambda: state_is("available"))
    relock = await _lock(coupons, "order-c", "racer", [cid], 10_000)
    assert relock["total"] == 8_500
    await redis.xadd(
        ORDER_EVENTS_STREAM, encode_event(EventType.ORDER_PAID, {"order_id": "order-c", "user_id": "racer"})
    )
    await wait_for(lambda: state_is("used"))
    stats = await _stats(coupons, template["id"])
    assert (stats["used"], stats["discount_given"]) == (1, 1_500)
    reuse = await _lock(coupons, "order-d", "racer", [cid], 10_000)
    assert reuse["rejections"][0]["code"] == "ALREADY_USED"


async def test_new_user_coupon_stops_applying_after_the_first_paid_order(
    coupons: httpx.AsyncClient, redis: Redis
) -> None:
    template = await _template(coupons, kind="new_user", amount_off=800)
    cid = (await _claim(coupons, template["id"], "newbie")).json()["coupon_id"]
    await wait_for(lambda: _wallet_size(coupons, "newbie", 1))
    assert (await _quote(coupons, "newbie", [_line(5_000)], ids=[cid]))["total"] == 4_200
    paid = encode_event(EventType.ORDER_PAID, {"order_id": "first-ever", "user_id": "newbie"})
    await redis.xadd(ORDER_EVENTS_STREAM, paid)

    async def no_longer_new() -> bool:
        q = await _quote(coupons, "newbie", [_line(5_000)], ids=[cid])
        return bool(q["rejections"] and q["rejections"][0]["code"] == "NOT_A_NEW_USER")

    await wait_for(no_longer_new)


async def test_compensation_coupons_reach_every_listed_user_once(coupons: httpx.AsyncClient) -> None:
    template = await _template(coupons, kind="compensation", amount_off=2_000, total_quantity=1_000)
    body = {"template_id": template["id"], "user_ids": ["c-1", "c-2", "c-3", "c-2"], "reason": "payment outage"}
    headers = {**admin_headers(), "Idempotency-Key": "outage-2026-11-25"}
    first = await coupons.post("/admin/compensation", json=body, headers=headers)
    again = await coupons.post("/admin/compensation", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert len(first.json()) == 3
    assert sorted(c["coupon_id"] for c in first.json()) == sorted(c["coupon_id"] for c in again.json())
    assert (await _stats(coupons, template["id"]))["claimed"] == 3
    assert template["id"] not in [t["id"] for t in (await coupons.get("/templates")).json()]  # not claimable


async def test_partial_refund_below_the_tier_gives_back_less(coupons: httpx.AsyncClient) -> None:
    template = await _template(coupons, kind="tiered", amount_off=0, tiers=TIERS)
    cid = (await _claim(coupons, template["id"], "refunder")).json()["coupon_id"]
    await wait_for(lambda: _wallet_size(coupons, "refunder", 1))
    lines = [_line(45_000, sku="SKU-A"), _line(15_000, sku="SKU-B")]
    body = {"order_id": "refund-order", "user_id": "refunder", "lines": lines, "coupon_ids": [cid]}
    locked = (await coupons.post("/admin/locks", json=body, headers=admin_headers())).json()
    assert (locked["subtotal"], locked["total"]) == (60_000, 50_000)

    async def refund(refunded: list[dict[str, Any]]) -> httpx.Response:
        return await coupons.post(
            "/admin/refund-amount",
            json={"order_id": "refund-order", "user_id": "refunder", "lines": lines, "refunded": refunded},
            headers=admin_headers(),
        )

    partial = (await refund([_line(15_000, sku="SKU-B")])).json()
    assert (partial["paid"], partial["kept_total"], partial["refund"]) == (50_000, 40_000, 10_000)
    whole = (await refund(lines)).json()
    assert whole["refund"] == 50_000
    bad = await refund([_line(99_000, sku="SKU-Z")])
    assert bad.status_code == 422
    assert bad.json()["code"] == "INVALID_REFUND"


async def test_counters_left_by_an_earlier_template_with_the_same_id_are_not_inherited(
    coupons: httpx.AsyncClient, redis: Redis
) -> None:
    latest = await _template(coupons)
    next_id = latest["id"] + 1
    # What a recreated database meets: Redis still holds the claims of an older template with this id.
    await redis.hset(template_key(next_id), mapping={"claimed": 5, "total": 5, "incarnation": "1"})
    await redis.hset(claims_key(next_id), "heir", 1)
    await redis.set(claim_idempotency_key(next_id, "heir", "k"), "old-coupon|1")
    fresh = await _template(coupons, total_quantity=5)
    assert fresh["id"] == next_id
    claim = await _claim(coupons, next_id, "heir")
    assert claim.status_code == 201, claim.text
    assert claim.json()["coupon_id"] != "old-coupon"
    assert (await _stats(coupons, next_id))["claimed"] == 1


async def test_validity_from_claim_and_member_offers(coupons: httpx.AsyncClient) -> None:
    days = await _template(coupons, valid_days=3)
    await _claim(coupons, days["id"], "member-1")
    members = await _template(coupons, kind="member_only", amount_off=0, percent_bp=500, total_quantity=10)
    cid = (await _claim(coupons, members["id"], "member-1", key="m")).json()["coupon_id"]
    await wait_for(lambda: _wallet_size(coupons, "member-1", 2))
    wallet = {
        c["template"]["id"]: c for c in (await coupons.get("/wallet", headers=customer_headers("member-1"))).json()
    }
    claimed = datetime.fromisoformat(wallet[days["id"]]["claimed_at"])
    until = datetime.fromisoformat(wallet[days["id"]]["valid_until"])
    assert until - claimed == timedelta(days=3)

    lines = {"lines": [_line(10_000)], "coupon_ids": [cid]}
    plain = await coupons.post("/quote", json=lines, headers=customer_headers("member-1"))
    assert plain.json()["rejections"][0]["code"] == "NOT_A_MEMBER"
    member = await coupons.post(
        "/quote", json=lines, headers={"Authorization": f"Bearer {token('member-1', ['customer', 'member'])}"}
    )
    assert (member.json()["discount"], member.json()["total"]) == (500, 9_500)


async def test_shoppers_cannot_claim_compensation_coupons(coupons: httpx.AsyncClient) -> None:
    template = await _template(coupons, kind="compensation", amount_off=500)
    resp = await _claim(coupons, template["id"], "opportunist")
    assert resp.status_code == 404
    assert resp.json()["code"] == "TEMPLATE_NOT_FOUND"
    assert (await _stats(coupons, template["id"]))["claimed"] == 0


async def test_repricing_an_order_lets_go_of_a_coupon_that_no_longer_applies(coupons: httpx.AsyncClient) -> None:
    template = await _template(coupons, amount_off=1_000, min_spend=5_000)
    cid = (await _claim(coupons, template["id"], "repricer")).json()["coupon_id"]
    await wait_for(lambda: _wallet_size(coupons, "repricer", 1))
    assert (await _lock(coupons, "order-r", "repricer", [cid], 6_000))["discount"] == 1_000
    again = await _lock(coupons, "order-r", "repricer", [cid], 4_000)  # the order changed: below the threshold
    assert again["discount"] == 0
    assert again["rejections"][0]["code"] == "BELOW_THRESHOLD"
    wallet = (await coupons.get("/wallet", headers=customer_headers("repricer"))).json()
    assert wallet[0]["state"] == "available"


async def test_claim_counters_lost_with_redis_are_rebuilt_from_the_wallets(
    coupons: httpx.AsyncClient, redis: Redis
) -> None:
    template = await _template(coupons, total_quantity=5, per_user_limit=1)
    tid = template["id"]
    for n in range(3):
        assert (await _claim(coupons, tid, f"lost-{n}")).status_code == 201
    await wait_for(lambda: _wallet_size(coupons, "lost-2", 1))

    await redis.delete(template_key(tid), claims_key(tid))  # what a crash without persistence loses
    assert (await _claim(coupons, tid, "lost-new")).status_code == 404

    async def restored() -> bool:
        return await redis.hget(template_key(tid), "claimed") == "3"

    await wait_for(restored, timeout=15)  # the restore job, every 5 s on every replica
    again = await _claim(coupons, tid, "lost-0", key="after-crash")
    assert again.status_code == 403 and again.json()["code"] == "CLAIM_LIMIT_REACHED"
    results = [await _claim(coupons, tid, f"lost-late-{n}") for n in range(4)]
    assert [r.status_code for r in results] == [201, 201, 409, 409]  # 3 + 2 = the 5 there are, not one more
    assert (await _stats(coupons, tid))["claimed"] == 5

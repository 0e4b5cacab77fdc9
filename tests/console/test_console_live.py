"""The console's push channel over plain HTTP against a real gateway and real flashsale replicas: who may open
it, what a snapshot holds, and one collector per sale whatever the number of consoles (the live page itself
is driven in Chromium in test_console_pages.py, where every service runs)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from tests.console.conftest import ConsoleStack


def live_sale(stack: ConsoleStack, *, quantity: int = 10, threshold_pct: int = 50) -> dict[str, Any]:
    """A live sale made through the admin API, five units a buyer."""
    now = datetime.now(UTC)
    body = {
        "sku": "SKU-LIVE",
        "title": f"Live {uuid.uuid4().hex[:6]}",
        "price": 1_000,
        "original_price": 2_000,
        "quantity": quantity,
        "per_user_limit": 5,
        "low_stock_threshold_pct": threshold_pct,
        "starts_at": (now + timedelta(hours=1)).isoformat(),
        "ends_at": (now + timedelta(hours=3)).isoformat(),
    }
    created = stack.admin("POST", "/sales", json=body)
    assert created.status_code == 201, created.text
    sale: dict[str, Any] = created.json()
    started = stack.admin("POST", f"/sales/{sale['id']}/start")
    assert started.status_code == 200, started.text
    return sale


def buy(stack: ConsoleStack, sale_id: int, user_id: str, quantity: int) -> None:
    """A shopper's purchase through the gateway, accepted."""
    headers = {
        "Authorization": f"Bearer {stack.token(user_id, ['customer'])}",
        "Idempotency-Key": uuid.uuid4().hex,
    }
    resp = httpx.post(
        f"{stack.url}/api/flashsale/sales/{sale_id}/purchase", json={"quantity": quantity}, headers=headers, timeout=5
    )
    assert resp.status_code == 202, resp.text


def ticket(stack: ConsoleStack, sale_id: int, token: str | None = None) -> httpx.Response:
    """The gateway's answer to a ticket request for the sale's live stream."""
    token = token or stack.token("ops-live", ["admin"])
    return httpx.post(
        f"{stack.url}/console/live/tickets",
        json={"sale_id": sale_id},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )


def stream_url(stack: ConsoleStack, sale_id: int) -> str:
    """A stream address with a fresh ticket."""
    resp = ticket(stack, sale_id)
    assert resp.status_code == 200, resp.text
    return stack.url + str(resp.json()["url"])


async def snapshots(client: httpx.AsyncClient, url: str, count: int) -> list[dict[str, Any]]:
    """The first `count` snapshot events of one live stream, and the retry hint seen before them."""
    seen: list[dict[str, Any]] = []
    async with client.stream("GET", url) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        event = ""
        retry = False
        async for line in resp.aiter_lines():
            retry = retry or line.startswith("retry: ")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: ") and event == "snapshot":
                seen.append(orjson.loads(line[len("data: ") :]))
                if len(seen) == count:
                    break
        assert retry, "the stream tells the browser how long to wait before reconnecting"
    return seen


def stats_reads(stack: ConsoleStack, sale_id: int) -> int:
    """How many times the gateway's collectors read the sale's stats (flashsale audits every read)."""
    resp = stack.admin("GET", "/audit", params={"sale_id": sale_id, "limit": 500})
    assert resp.status_code == 200, resp.text
    return sum(1 for e in resp.json() if e["action"] == "stats" and e["actor"] == "gateway-console")


def test_the_live_stream_opens_only_with_a_fresh_admin_ticket_for_that_sale(console_stack: ConsoleStack) -> None:
    sale = live_sale(console_stack)
    other = live_sale(console_stack)
    assert httpx.post(f"{console_stack.url}/console/live/tickets", json={"sale_id": sale["id"]}).status_code == 401
    shopper = ticket(console_stack, sale["id"], console_stack.token("shopper-live", ["customer"]))
    assert shopper.status_code == 403 and shopper.json()["code"] == "FORBIDDEN"
    assert ticket(console_stack, 0).status_code == 422

    good = ticket(console_stack, sale["id"]).json()["ticket"]
    live = f"{console_stack.url}/console/live"
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for params in ({"sale_id": sale["id"], "ticket": forged}, {"sale_id": other["id"], "ticket": good}):
        refused = httpx.get(live, params=params, timeout=5)
        assert refused.status_code == 401, params
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "UNAUTHENTICATED"
    assert httpx.get(live, params={"sale_id": sale["id"]}, timeout=5).status_code == 422

    url = f"{live}?sale_id={sale['id']}&ticket={good}"
    first = asyncio.run(read_one(url))
    assert first["sale_id"] == sale["id"] and first["stats"]["remaining"] == 10
    assert first["stats"]["state"] == "live" and first["orders_error"]
    assert {r["pool"] for r in first["upstreams"]} >= {"flashsale", "order"}
    used = httpx.get(url, timeout=5)
    assert used.status_code == 401 and "used already" in used.json()["detail"]


async def read_one(url: str) -> dict[str, Any]:
    """The first snapshot of a stream."""
    async with httpx.AsyncClient(timeout=10) as client:
        return (await snapshots(client, url, 1))[0]


def test_one_collector_reads_a_sale_once_a_tick_however_many_consoles_watch_it(console_stack: ConsoleStack) -> None:
    sale = live_sale(console_stack)
    urls = [stream_url(console_stack, sale["id"]) for _ in range(3)]

    async def watch_together() -> list[list[dict[str, Any]]]:
        async with httpx.AsyncClient(timeout=15) as client:
            return await asyncio.gather(*(snapshots(client, url, 3) for url in urls))

    streams = asyncio.run(watch_together())
    # Every console got the same snapshots (the moments they were taken at), not one poll of its own each.
    moments = [{s["at"] for s in stream} for stream in streams]
    assert len(set.union(*moments)) <= 4
    assert stats_reads(console_stack, sale["id"]) <= 5

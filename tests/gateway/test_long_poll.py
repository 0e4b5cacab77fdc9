"""Long-polls through the gateway: the timeout covers the asked wait, and a long-poll is never waited twice."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import customer_headers, db_url_for, order_processes
from tests.gateway.test_failover import NO_EJECTION

ORDER_DB_URL = db_url_for("orders_lp")


@pytest.fixture(scope="module")
def order_replica() -> Iterator[str]:
    """A real order process on a database of its own."""
    with order_processes("orders_lp", {"REPLICA_ID": "gw-long-poll"}) as (url,):
        yield url


async def test_a_long_poll_longer_than_the_route_timeout_answers_404_after_its_wait(
    start_gateway: Any, order_replica: str
) -> None:
    # The route's own timeout is shorter than the wait asked, as 10 s is shorter than the documented 20 s.
    gw = await start_gateway(order_urls=order_replica, order_timeout=1.0, long_poll_margin_seconds=2.0)
    reservation = f"r-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
        resp = await client.get(
            f"/api/order/orders/by-reservation/{reservation}?wait=2.5", headers=customer_headers("lp-buyer")
        )
    assert resp.status_code == 404, resp.text
    assert resp.json()["code"] == "ORDER_NOT_FOUND"


async def test_a_long_poll_is_answered_within_its_wait_and_a_timed_out_one_is_not_sent_again(
    start_gateway: Any, upstreams: Any
) -> None:
    a, b = await upstreams("a", "b")
    a.mode = b.mode = "slow"
    a.delay = b.delay = 1.5
    gw = await start_gateway(
        order_urls=f"{a.url},{b.url}", order_timeout=0.5, long_poll_margin_seconds=2.0, **NO_EJECTION
    )
    async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
        # Answered 1.5 s into a 1 s wait: within the wait plus the margin, though past the route's 0.5 s.
        resp = await client.get("/api/order/orders/by-reservation/r-1?wait=1")
        assert resp.status_code == 200, resp.text
        assert resp.json()["query"] == "wait=1"

        # No answer within the wait and its margin: one 504, and the other replica is not made to wait again.
        a.mode = b.mode = "hang"
        before = a.total + b.total
        resp = await client.get("/api/order/orders/by-reservation/r-2?wait=0.5")
        assert resp.status_code == 504 and resp.json()["code"] == "UPSTREAM_TIMEOUT"
        assert a.total + b.total - before == 1

        # Without a wait it is an ordinary GET: the route's timeout, and one retry elsewhere.
        before = a.total + b.total
        resp = await client.get("/api/order/orders/by-reservation/r-3")
        assert resp.status_code == 504
        assert a.total + b.total - before == 2

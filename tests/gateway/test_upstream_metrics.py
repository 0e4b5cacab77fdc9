"""The gateway's /metrics tells which replicas take traffic, each breaker's state, and a pool with none left."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
from tests.gateway.conftest import dead_url


async def gauges(url: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of one gauge on the gateway's /metrics, by label set."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics")).text
    return {
        frozenset(s.labels.items()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    """A label set."""
    return frozenset(values.items())


async def test_a_replica_failing_its_check_is_down_and_a_pool_without_replicas_is_empty(
    start_gateway: Any, upstreams: Any
) -> None:
    up, sick = await upstreams("up", "sick")
    sick.ready = False
    nobody = dead_url()
    gw = await start_gateway(flashsale_urls=f"{up.url},{sick.url}", coupon_urls=nobody)

    async def checked() -> dict[frozenset[tuple[str, str]], float] | None:
        replicas = await gauges(gw.url, "gateway_replica_up")
        return replicas if replicas.get(labels(pool="coupon", replica=nobody, tier="primary")) == 0 else None

    replicas = await wait_for(checked)
    assert replicas[labels(pool="flashsale", replica=up.url, tier="primary")] == 1
    assert replicas[labels(pool="flashsale", replica=sick.url, tier="primary")] == 0
    pools = await gauges(gw.url, "gateway_pool_available_replicas")
    assert pools[labels(pool="flashsale")] == 1
    assert pools[labels(pool="coupon")] == 0
    assert (await gauges(gw.url, "gateway_pool_replicas"))[labels(pool="flashsale")] == 2
    breakers = await gauges(gw.url, "gateway_replica_breaker_state")
    flashsale_up = {"pool": "flashsale", "replica": up.url, "tier": "primary"}
    assert breakers[labels(**flashsale_up, state="closed")] == 1
    assert breakers[labels(**flashsale_up, state="open")] == 0

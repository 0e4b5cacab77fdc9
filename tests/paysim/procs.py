"""HTTP helpers to drive the paysim providers in tests (the processes come from the `paysim` fixture)."""

from __future__ import annotations

import re

import httpx

from tests.conftest import admin_headers


async def set_faults(client: httpx.AsyncClient, url: str, **faults: object) -> None:
    """PUT faults on one provider."""
    resp = await client.put(f"{url}/admin/faults", json=faults, headers=admin_headers())
    assert resp.status_code == 200, resp.text


async def reset_faults(client: httpx.AsyncClient, *urls: str) -> None:
    """Make providers healthy again."""
    for url in urls:
        resp = await client.delete(f"{url}/admin/faults", headers=admin_headers())
        assert resp.status_code == 200, resp.text


async def payments_for(client: httpx.AsyncClient, url: str, order_id: str) -> list[dict[str, object]]:
    """What one provider charged for an order."""
    resp = await client.get(f"{url}/payments", params={"order_id": order_id})
    assert resp.status_code == 200, resp.text
    payments: list[dict[str, object]] = resp.json()
    return payments


_POSTS = re.compile(r'^http_requests_total\{[^}]*method="POST"[^}]*route="/payments"[^}]*\} (\S+)$', re.M)


async def charge_calls_seen(client: httpx.AsyncClient, url: str) -> float:
    """How many POST /payments requests a provider has served (from its /metrics)."""
    resp = await client.get(f"{url}/metrics")
    assert resp.status_code == 200
    return sum(float(v) for v in _POSTS.findall(resp.text))

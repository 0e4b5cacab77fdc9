"""Real paysim provider processes (primary and backup) for tests, and the HTTP helpers to drive them."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.common.auth import issue_token
from services.common.config import BaseServiceSettings

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(user_id: str, roles: list[str]) -> str:
    """A signed token for the test environment."""
    return issue_token(BaseServiceSettings(env="test"), user_id, roles)


def admin_headers(user_id: str = "sre-drill") -> dict[str, str]:
    """Headers of an admin."""
    return {"Authorization": f"Bearer {token(user_id, ['admin'])}"}


def customer_headers(user_id: str = "buyer-1") -> dict[str, str]:
    """Headers of a customer."""
    return {"Authorization": f"Bearer {token(user_id, ['customer'])}"}


@dataclass(frozen=True)
class PaySims:
    """Base URLs of the running providers."""

    primary: str
    backup: str

    @property
    def urls(self) -> dict[str, str]:
        """Provider name -> base URL."""
        return {"primary": self.primary, "backup": self.backup}


def _wait_ready(url: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"paysim at {url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"paysim at {url} did not become ready")
        time.sleep(0.05)


@contextmanager
def running_paysims() -> Iterator[PaySims]:
    """Start a primary and a backup paysim as real uvicorn processes; stop them afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for name in ("primary", "backup"):
            port = free_port()
            env = {**os.environ, "APP_ENV": "test", "PAYSIM_NAME": name, "LOG_LEVEL": "WARNING"}
            cmd = [sys.executable, "-m", "uvicorn", "services.paysim.main:app", "--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env))
            urls[name] = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        for proc, url in zip(procs, urls.values(), strict=True):
            _wait_ready(url, proc, deadline)
        yield PaySims(primary=urls["primary"], backup=urls["backup"])
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


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

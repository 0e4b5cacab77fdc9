"""Where the stack's services answer, for the load test, the checker and the drills.

Two ways in: through the gateway (`/api/<service>/...` on one base URL, the way storefronts call it), or
"direct", each service on its own replicas (the launcher's ports shifted by STACK_PORT_OFFSET), for working
without a gateway or reading admin APIs when the gateway is the thing under test. The launcher's topology
(deploy/topology.py) is the one source of the ports.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from deploy import topology

ROOT = Path(__file__).resolve().parent.parent

HOST = topology.HOST
GATEWAY_PORT = 8000
SERVICES = ("inventory", "flashsale", "coupon", "order")
DEFAULT_LAUNCHER_ENV = ROOT / ".stack" / "backends.env"


def port_offset() -> int:
    """STACK_PORT_OFFSET, as the launcher reads it."""
    return topology.port_offset()


def replica_urls(service: str, offset: int | None = None) -> list[str]:
    """Base URLs of every replica of one service, from the launcher's topology."""
    shift = port_offset() if offset is None else offset
    spec = topology.spec_named(service)
    return [f"http://{HOST}:{port}" for _name, port in spec.replicas(shift)]


def gateway_url(offset: int | None = None) -> str:
    """The gateway's base URL: the launcher's `gateway` entry when it has one, else port 8000 + offset."""
    shift = port_offset() if offset is None else offset
    try:
        return replica_urls("gateway", shift)[0]
    except StopIteration:
        return f"http://{HOST}:{GATEWAY_PORT + shift}"


def stack_redis_url() -> str:
    """REDIS_URL from the environment, else the one the launcher wrote to .stack/backends.env."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    try:
        for line in DEFAULT_LAUNCHER_ENV.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "REDIS_URL" and value:
                return shlex.split(value)[0]
    except OSError:
        pass
    return f"redis://{HOST}:6379/0"


@dataclass(frozen=True, slots=True)
class Targets:
    """Base URLs per service: the gateway with a path prefix, or each service's own replicas."""

    mode: str  # "gateway" or "direct"
    bases: dict[str, list[str]] = field(default_factory=dict)  # service -> base URLs (prefix included)

    def url(self, service: str, path: str, replica: int = 0) -> str:
        """The absolute URL of `path` on one service (replica n, wrapping around)."""
        bases = self.bases[service]
        return f"{bases[replica % len(bases)]}{path}"

    def replicas(self, service: str) -> int:
        """How many base URLs one service has."""
        return len(self.bases[service])


def gateway_targets(base: str) -> Targets:
    """Every service behind one gateway: /api/<service>/..."""
    base = base.rstrip("/")
    return Targets("gateway", {name: [f"{base}/api/{name}"] for name in SERVICES})


def direct_targets(offset: int | None = None) -> Targets:
    """Every service on its own replicas: LOADTEST_<SERVICE>_URLS (comma-separated), else the launcher's ports."""
    bases = {}
    for name in SERVICES:
        listed = [u.strip().rstrip("/") for u in os.environ.get(f"LOADTEST_{name.upper()}_URLS", "").split(",")]
        bases[name] = [u for u in listed if u] or replica_urls(name, offset)
    return Targets("direct", bases)


def env_for(targets: Targets) -> dict[str, str]:
    """The LOADTEST_* settings under which `resolve()` finds these same targets in another process (Locust's)."""
    if targets.mode == "gateway":
        return {"LOADTEST_MODE": "gateway", "LOADTEST_GATEWAY": targets.bases["flashsale"][0].rsplit("/api/", 1)[0]}
    urls = {f"LOADTEST_{name.upper()}_URLS": ",".join(bases) for name, bases in targets.bases.items()}
    return {"LOADTEST_MODE": "direct", **urls}


def resolve(mode: str | None = None, gateway: str | None = None) -> Targets:
    """The targets for a mode: `gateway`, `direct`, or `auto` (the gateway when its readiness probe answers)."""
    mode = (mode or os.environ.get("LOADTEST_MODE") or "auto").lower()
    base = gateway or os.environ.get("LOADTEST_GATEWAY") or gateway_url()
    if mode == "gateway":
        return gateway_targets(base)
    if mode == "direct":
        return direct_targets()
    if mode != "auto":
        raise ValueError(f"LOADTEST_MODE must be gateway, direct or auto, not {mode!r}")
    import httpx

    try:
        if httpx.get(f"{base}/healthz/ready", timeout=1.0).status_code == 200:
            return gateway_targets(base)
    except httpx.HTTPError:
        pass
    return direct_targets()

"""The stack's topology, declared once: every service, its replicas and ports, what each replica needs.

The launcher starts these as processes; docker-compose.yml describes the same replicas for Docker and
tests/deploy/test_compose.py holds the two in step. Only the standard library is imported here, so the load
tools (loadtest/targets.py) and the tests read the table without the launcher's dependencies.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from deploy.errors import StackError

HOST = "127.0.0.1"
HTTP_PROTOCOL = "services.common.server:CoalescingHttpProtocol"  # uvicorn --http of every process


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service of the stack: what to run, where its replicas listen, and its own database."""

    name: str  # the package under services/; replicas are <name>-1, <name>-2, ...
    app: str  # uvicorn import string, module:attribute
    ports: tuple[int, ...]  # one replica per port
    env_prefix: str  # its settings' env prefix: it reads <prefix>DATABASE_URL
    database: str | None  # its database on the shared server, migrated by `services.common.migrate <name>`
    # Extra environment of each replica, in the order of `ports` (empty: none), e.g. a provider's name.
    replica_env: tuple[dict[str, str], ...] = ()
    # Env var -> replica it must reach: the var gets that replica's base URL, and that replica is ready
    # before this service starts (in docker-compose.yml: http://<replica>:<port> and depends_on healthy).
    links: dict[str, str] = field(default_factory=dict)
    # Env var -> replica it calls only while serving a request (never to start): the var gets that replica's
    # base URL, but this service does not wait for it, so two services may call each other (no start cycle).
    # In docker-compose.yml: http://<replica>:<port>, and no depends_on.
    calls: dict[str, str] = field(default_factory=dict)
    # Env var -> service whose every replica it needs (a pool): the var gets their base URLs, comma-separated,
    # and every one of them is ready before this service starts (the gateway's upstream pools).
    pools: dict[str, str] = field(default_factory=dict)
    # Environment every replica gets (e.g. the gateway's local-stack limits).
    env: dict[str, str] = field(default_factory=dict)
    # uvicorn worker processes per replica (one port shared by the workers).
    workers: int = 1
    # More uvicorn options of this service.
    uvicorn_args: tuple[str, ...] = ()
    # uvicorn's --http: its HTTP protocol implementation (a name, or a class as module:attribute). Every service
    # runs uvicorn's httptools protocol with each answer sent in one send() (services/common/server.py).
    http: str = HTTP_PROTOCOL

    def __post_init__(self) -> None:
        if self.replica_env and len(self.replica_env) != len(self.ports):
            raise ValueError(f"{self.name}: replica_env needs one entry per port")

    def replicas(self, offset: int = 0) -> list[tuple[str, int]]:
        """(replica name, port + offset) of each replica."""
        return [(f"{self.name}-{i}", port + offset) for i, port in enumerate(self.ports, start=1)]

    def env_of(self, replica: str) -> dict[str, str]:
        """The extra environment of one replica (by name)."""
        names = [name for name, _port in self.replicas()]
        return {**self.env, **(self.replica_env[names.index(replica)] if self.replica_env else {})}

    def needs(self) -> list[str]:
        """The replicas that must be ready before this service starts (links and pools)."""
        pooled = [name for service in self.pools.values() for name, _port in spec_named(service).replicas()]
        return [*self.links.values(), *pooled]


# The stack in start order (a service after those it links to). A service joins with one entry here
# (and its replicas in docker-compose.yml, which tests/deploy/test_compose.py checks against this table).
SERVICES: tuple[ServiceSpec, ...] = (
    # Warehouse stock: SKUs, its ledger, allocations to sales, checkout holds, reconciliation. Its own database.
    ServiceSpec("inventory", "services.inventory.main:app", (8101, 8111), "INVENTORY_", "inventory"),
    # A sale's quantity is allocated from the warehouse (inventory), and its sold and returned units settled
    # there; reconciliation compares its Redis counters with the order record (and rebuilds them from it).
    ServiceSpec(
        "flashsale",
        "services.flashsale.main:app",
        (8102, 8112),
        "FLASHSALE_",
        "flashsale",
        links={"FLASHSALE_INVENTORY_URL": "inventory-1"},
        calls={"FLASHSALE_ORDER_URL": "order-1"},
    ),
    # The mock payment provider, twice: two separate "companies", primary and backup. No database.
    ServiceSpec(
        "paysim",
        "services.paysim.main:app",
        (8105, 8115),
        "PAYSIM_",
        None,
        replica_env=({"PAYSIM_NAME": "primary"}, {"PAYSIM_NAME": "backup"}),
    ),
    # Coupon templates, claims and wallets; it prices and locks the coupons of orders. Its own database.
    # Compensation asks the order service whose orders a system failure cancelled (order starts after coupon).
    ServiceSpec(
        "coupon",
        "services.coupon.main:app",
        (8103, 8113),
        "COUPON_",
        "coupons",
        calls={"COUPON_ORDER_URL": "order-1"},
    ),
    ServiceSpec(
        "order",
        "services.order.main:app",
        (8104, 8114),
        "ORDER_",
        "orders",
        links={
            "ORDER_PAYSIM_PRIMARY_URL": "paysim-1",
            "ORDER_PAYSIM_BACKUP_URL": "paysim-2",
            "ORDER_COUPON_URL": "coupon-1",  # prices orders that name coupons, and locks those coupons
        },
    ),
    # The single entry point (/api/<service>/...): pools of every replica, health checks, failover, auth at the
    # edge, rate limits, load shedding. Two worker processes share port 8000 (one would cap the stack at one
    # core); each keeps its own view of the pools, the rate limits are shared in Redis.
    ServiceSpec(
        "gateway",
        "gateway.main:app",
        (8000,),
        "GATEWAY_",
        None,
        pools={f"GATEWAY_{name.upper()}_URLS": name for name in ("inventory", "flashsale", "coupon", "order")},
        env={
            "GATEWAY_DEV_TOKENS": "true",  # POST /api/auth/token, for the demo and load tests (dev only)
            # Every local client is 127.0.0.1: per-IP buckets sized for a whole crowd on one machine.
            "GATEWAY_IP_RATE": "20000",
            "GATEWAY_IP_BURST": "40000",
            "GATEWAY_PURCHASE_IP_RATE": "20000",
            "GATEWAY_PURCHASE_IP_BURST": "40000",
        },
        workers=2,
        # The gateway decides who the client is (GATEWAY_TRUSTED_PROXY_HOPS), not uvicorn: a local client must
        # not pick its own address for the per-IP limits with an X-Forwarded-For header.
        uvicorn_args=("--no-proxy-headers",),
    ),
)
GATEWAY_PREFIX = "/api"
PAYMENT_DEADLINE_VAR = "ORDER_PAYMENT_DEADLINE_SECONDS"  # the order service's time to pay (default 900 s)


def spec_named(name: str) -> ServiceSpec:
    """The service of that name."""
    return next(spec for spec in SERVICES if spec.name == name)


def replica_port(replica: str, offset: int = 0) -> int:
    """The port of a replica (by name), shifted by `offset`."""
    for spec in SERVICES:
        for name, port in spec.replicas(offset):
            if name == replica:
                return port
    raise KeyError(replica)


def port_offset() -> int:
    """STACK_PORT_OFFSET shifts every service port, to run a second stack beside one on the usual ports."""
    raw = os.environ.get("STACK_PORT_OFFSET", "0").strip() or "0"
    try:
        offset = int(raw)
    except ValueError:
        raise StackError(f"STACK_PORT_OFFSET must be an integer, not {raw!r}") from None
    if not 0 <= offset <= 50_000:
        raise StackError("STACK_PORT_OFFSET must be between 0 and 50000")
    return offset


def uvicorn_command(spec: ServiceSpec, port: int) -> list[str]:
    """How one replica runs, with the launcher's own Python."""
    return [
        sys.executable, "-m", "uvicorn", spec.app,
        "--host", HOST,
        "--port", str(port),
        "--no-access-log",
        "--loop", "uvloop",
        "--http", spec.http,
        "--timeout-graceful-shutdown", "10",
        *(["--workers", str(spec.workers)] if spec.workers > 1 else []),
        *spec.uvicorn_args,
    ]  # fmt: skip

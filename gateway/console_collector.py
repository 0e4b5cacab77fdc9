"""The console's live numbers of a sale: ONE collector per sale per gateway process polls the services once a
tick and fans each snapshot out to every console watching that sale.

A collector starts with its sale's first watcher and stops with its last, so the services see one poll per
tick per watched sale whatever the number of consoles. Upstream calls go to the pools' replicas the proxy
uses (same failover order), with the gateway's own service token: reads the services audit name it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import RedisError

from gateway.pools import Pool, monotonic
from gateway.upstream import UpstreamError
from gateway.views import ViewPublisher, local_view, summarize
from services.common.auth import ServiceToken
from services.common.contracts import ALERTS_STREAM, decode_event
from services.common.resources import RedisClient

log = logging.getLogger("gateway.console_live")

# The alerts a console is shown when it connects, and at most this many kept per sale.
RECENT_ALERTS = 50
# Reconciliation asks the order record and the warehouse: once every this many ticks, not every second.
RECONCILE_EVERY_TICKS = 5
CLOSE = None  # put on a watcher's queue: the stream ends


class Upstreams:
    """GET requests to the services' admin APIs through the gateway's pools, as JSON."""

    def __init__(self, pools: dict[str, Pool], token: ServiceToken, timeout: float) -> None:
        self.pools = pools
        self.token = token
        self.timeout = timeout
        self.calls = 0

    async def get(self, service: str, target: str) -> tuple[int, Any]:
        """Status and JSON body of `GET target` on one replica of `service` (another on a failed connect)."""
        pool = self.pools[service]
        tried = None
        for _ in range(2):
            replica = pool.pick(monotonic(), exclude=tried)
            if replica is None:
                break
            tried = replica
            head = (
                f"GET {target} HTTP/1.1\r\nhost: {replica.client.host_header.decode()}\r\n"
                f"authorization: {self.token.headers()['Authorization']}\r\naccept: application/json\r\n\r\n"
            ).encode()
            self.calls += 1
            try:
                resp = await replica.client.request(head, b"", answer_within=self.timeout)
            except UpstreamError:
                continue
            try:
                return resp.status, orjson.loads(resp.body) if resp.body else None
            except orjson.JSONDecodeError:
                return resp.status, None
        return 503, {"code": "UPSTREAM_UNAVAILABLE", "detail": f"no {service} replica answered"}


class Rate:
    """Per-second rate of a counter from its successive readings."""

    def __init__(self) -> None:
        self.last: tuple[float, int] | None = None

    def update(self, now: float, value: int | None) -> float | None:
        """The rate since the previous reading (None for the first one or a missing value)."""
        if value is None:
            return None
        previous, self.last = self.last, (now, value)
        if previous is None or now <= previous[0]:
            return None
        return max(0.0, (value - previous[1]) / (now - previous[0]))


def alert_of(entry_id: str, fields: dict[Any, Any]) -> dict[str, Any]:
    """One entry of the alerts stream as the console shows it."""
    decoded = {k.decode() if isinstance(k, bytes) else k: v for k, v in fields.items()}
    event = decode_event(decoded)
    return {"stream_id": entry_id, **event}


def concerns(alert: dict[str, Any], sale_id: int, sku: str | None) -> bool:
    """Is this alert about the sale (its own alerts) or its SKU (the warehouse's)?"""
    if alert.get("sale_id") == sale_id:
        return True
    return sku is not None and alert.get("sku") == sku and "sale_id" not in alert


class SaleCollector:
    """Polls one sale's numbers every tick and hands each snapshot to every watcher's queue."""

    def __init__(self, sale_id: int, sources: LiveSources, interval: float) -> None:
        self.sale_id = sale_id
        self.sources = sources
        self.interval = interval
        self.watchers: set[asyncio.Queue[bytes | None]] = set()
        self.alerts: deque[dict[str, Any]] = deque(maxlen=RECENT_ALERTS)
        self.alerts_after: str | None = None
        self.purchases = Rate()
        self.orders = Rate()
        self.sku: str | None = None
        self.reconciliation: dict[str, Any] | None = None
        self.ticks = 0
        self.last: bytes | None = None
        self.task: asyncio.Task[None] | None = None
        self.reconciling: asyncio.Task[None] | None = None

    def watch(self) -> asyncio.Queue[bytes | None]:
        """A new watcher's queue; it gets the last snapshot at once when there is one."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)
        if self.last is not None:
            queue.put_nowait(self.last)
        self.watchers.add(queue)
        if self.task is None:
            self.task = asyncio.create_task(self.run(), name=f"console live sale {self.sale_id}")
        return queue

    async def run(self) -> None:
        """One snapshot per tick while anyone watches; a failing source shows as an error, never stops it."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while self.watchers:
            try:
                self.publish(orjson.dumps(await self.snapshot()))
            except Exception:
                log.exception("console live snapshot of sale %s failed", self.sale_id)
            next_tick += self.interval
            await asyncio.sleep(max(0.0, next_tick - loop.time()))

    def publish(self, snapshot: bytes) -> None:
        """Hand a snapshot to every watcher; one too slow to keep up loses its oldest, never slows the others."""
        self.last = snapshot
        for queue in self.watchers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(snapshot)

    async def snapshot(self) -> dict[str, Any]:
        """Everything the live page shows, read now."""
        sid = self.sale_id
        up = self.sources.upstreams
        if self.sku is None:
            status, sale = await up.get("flashsale", f"/admin/sales/{sid}")
            if status == 200:
                self.sku = sale.get("sku")
        (s_status, stats), (o_status, orders) = await asyncio.gather(
            up.get("flashsale", f"/admin/sales/{sid}/stats"), up.get("order", f"/admin/orders/stats?sale_id={sid}")
        )
        if self.ticks % RECONCILE_EVERY_TICKS == 0 and (self.reconciling is None or self.reconciling.done()):
            # Beside the tick, not in it: it asks the order record and the warehouse, and may take a while.
            self.reconciling = asyncio.create_task(self.reconcile())
        self.ticks += 1
        now = time.monotonic()
        accepted = stats["attempts"].get("ok") if s_status == 200 else None
        return {
            "sale_id": sid,
            "at": time.time(),
            "stats": stats if s_status == 200 else None,
            "stats_error": None if s_status == 200 else problem_text(s_status, stats),
            "orders": orders if o_status == 200 else None,
            "orders_error": None if o_status == 200 else problem_text(o_status, orders),
            "rates": {
                "purchases_per_second": self.purchases.update(now, accepted),
                "orders_per_second": self.orders.update(now, orders["orders"] if o_status == 200 else None),
            },
            "alerts": await self.read_alerts(),
            "reconciliation": self.reconciliation,
            "upstreams": await self.sources.upstream_health(),
        }

    async def reconcile(self) -> None:
        """The sale's reconciliation report (or why there is none), for the next snapshots."""
        status, report = await self.sources.upstreams.get("flashsale", f"/admin/sales/{self.sale_id}/reconciliation")
        self.reconciliation = report if status == 200 else {"error": problem_text(status, report)}

    async def read_alerts(self) -> list[dict[str, Any]]:
        """The sale's recent alerts, newest last, after reading what arrived since the last tick."""
        redis = self.sources.redis
        entries: list[Any]
        try:
            if self.alerts_after is None:
                newest: list[Any] = await redis.xrevrange(ALERTS_STREAM, count=500) or []
                entries = newest[::-1]
            else:
                answer: Any = await redis.xread({ALERTS_STREAM: self.alerts_after}, count=500)
                entries = list(answer[0][1]) if answer else []
        except (RedisError, OSError) as exc:
            log.warning("console live cannot read alerts: %s", type(exc).__name__)
            return list(self.alerts)
        self.alerts_after = self.alerts_after or "0-0"
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            self.alerts_after = entry_id
            alert = alert_of(entry_id, fields or {})
            if concerns(alert, self.sale_id, self.sku):
                self.alerts.append(alert)
        return list(self.alerts)


def problem_text(status: int, body: Any) -> str:
    """What a refused upstream call says, for the page."""
    if isinstance(body, dict):
        return f"{status} {body.get('code', '')}: {body.get('detail', '')}".strip()
    return f"{status}"


class LiveSources:
    """Where collectors read from: the services' admin APIs, the alerts stream, the gateway's own pools."""

    def __init__(
        self, upstreams: Upstreams, redis: RedisClient, worker: str, pools: dict[str, Pool], views: Callable[[], Any]
    ) -> None:
        self.upstreams = upstreams
        self.redis = redis
        self.worker = worker
        self.pools = pools
        self.views = views

    async def upstream_health(self) -> list[dict[str, Any]]:
        """Per replica, in how many gateway workers it is available, unhealthy, ejected or breaker-open."""
        views: list[dict[str, Any]] = [local_view(self.worker, self.pools.values())]
        publisher: ViewPublisher | None = self.views()
        if publisher is not None:
            with contextlib.suppress(RedisError, OSError):
                views += await publisher.all_views()
        return summarize(views)


class LiveHub:
    """Every collector of this gateway process, by sale, and the cap on connections."""

    def __init__(self, sources: LiveSources, *, interval: float, max_connections: int) -> None:
        self.sources = sources
        self.interval = interval
        self.max_connections = max_connections
        self.collectors: dict[int, SaleCollector] = {}
        self.closing = False

    @property
    def connections(self) -> int:
        """Open live connections."""
        return sum(len(c.watchers) for c in self.collectors.values())

    def full(self) -> bool:
        """No room for another connection (or the gateway is shutting down)."""
        return self.closing or self.connections >= self.max_connections

    def watch(self, sale_id: int) -> asyncio.Queue[bytes | None]:
        """Join the sale's collector (started for its first watcher)."""
        collector = self.collectors.get(sale_id)
        if collector is None:
            collector = self.collectors[sale_id] = SaleCollector(sale_id, self.sources, self.interval)
        return collector.watch()

    def leave(self, sale_id: int, queue: asyncio.Queue[bytes | None]) -> None:
        """Leave the sale's collector; the last watcher out stops it."""
        collector = self.collectors.get(sale_id)
        if collector is None:
            return
        collector.watchers.discard(queue)
        if not collector.watchers:
            del self.collectors[sale_id]
            for task in (collector.task, collector.reconciling):
                if task is not None:
                    task.cancel()

    def close(self) -> None:
        """End every stream (shutdown): each watcher gets CLOSE and no new one is let in."""
        self.closing = True
        for collector in self.collectors.values():
            for queue in collector.watchers:
                if queue.full():
                    # A slow watcher still ends: its oldest snapshot makes room for the close.
                    queue.get_nowait()
                queue.put_nowait(CLOSE)

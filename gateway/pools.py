"""Upstream pools: replicas with active health, passive ejection, a circuit breaker each, a backup tier, and a
panic mode that keeps a pool routing when every replica fails its readiness check at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from enum import StrEnum
from typing import Any

from prometheus_client import Counter

from gateway.config import SERVICES, GatewaySettings
from gateway.upstream import ReplicaClient, UpstreamClosed, UpstreamConnectError, UpstreamError, UpstreamResponse

log = logging.getLogger("gateway.pools")

EJECTIONS = Counter("gateway_ejections_total", "Passive ejections of a replica", ["pool", "replica"])
BREAKER_OPENS = Counter("gateway_breaker_opens_total", "Circuit breaker openings of a replica", ["pool", "replica"])
PANIC_ROUTED = Counter(
    "gateway_panic_routed_total", "Requests sent to a replica failing its check: none passed", ["pool"]
)
PROBLEM_JSON = b"application/problem+json"


def is_replica_failure(response: UpstreamResponse | None) -> bool:
    """Does this outcome count against the replica (breaker, passive ejection)?

    No answer or a 5xx does, except a 503 the service itself answered as problem+json: that is the replica
    telling, with its own code, that a dependency it shares with every other replica is out. Counting it
    would eject a whole pool for a Redis or PostgreSQL outage, routes that do not need it included.
    """
    if response is None:
        return True
    status = response.status
    if status < 500:
        return False
    if status != 503:
        return True
    for name, value in response.headers:
        if name == b"content-type":
            return not value.startswith(PROBLEM_JSON)
    return True


class BreakerState(StrEnum):
    """Closed lets calls through, open refuses them, half-open lets a few probes decide."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens when the failure ratio of the last `window` calls reaches `failure_ratio`; half-open after a pause."""

    def __init__(self, *, window: int, min_calls: int, failure_ratio: float, open_seconds: float, probes: int) -> None:
        self.window = window
        self.min_calls = min_calls
        self.failure_ratio = failure_ratio
        self.open_seconds = open_seconds
        self.max_probes = probes
        self.state = BreakerState.CLOSED
        self.outcomes: deque[bool] = deque()  # True is a failure
        self.failures = 0
        self.open_until = 0.0
        self.probes = 0
        self.opens = 0

    def allows(self, now: float) -> bool:
        """May a call go to this replica now? Moves an expired open breaker to half-open."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            if now < self.open_until:
                return False
            self.state = BreakerState.HALF_OPEN
            self.probes = 0
        return self.probes < self.max_probes

    def begin(self) -> bool:
        """A call starts; True when it is a half-open probe."""
        if self.state is BreakerState.HALF_OPEN:
            self.probes += 1
            return True
        return False

    def release_probe(self) -> None:
        """A probe ended without an answer to judge (the client left): free its slot."""
        self.probes = max(0, self.probes - 1)

    def record(self, failure: bool, probe: bool, now: float) -> bool:
        """Count a call's outcome; True when this outcome opened the breaker."""
        if probe:
            self.probes = max(0, self.probes - 1)
            if self.state is not BreakerState.HALF_OPEN:
                return False
            if failure:
                self._open(now)
                return True
            self._close()
            return False
        if self.state is not BreakerState.CLOSED:
            return False  # answers of calls started before it opened say nothing new
        outcomes = self.outcomes
        outcomes.append(failure)
        self.failures += failure
        if len(outcomes) > self.window:
            self.failures -= outcomes.popleft()
        if failure and len(outcomes) >= self.min_calls and self.failures >= self.failure_ratio * len(outcomes):
            self._open(now)
            return True
        return False

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self.open_until = now + self.open_seconds
        self.opens += 1
        self.outcomes.clear()
        self.failures = 0

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self.outcomes.clear()
        self.failures = 0

    def status(self, now: float) -> dict[str, Any]:
        """State for the admin view."""
        return {
            "state": self.state.value,
            "opens": self.opens,
            "recent_calls": len(self.outcomes),
            "recent_failures": self.failures,
            "reopens_in_seconds": round(max(0.0, self.open_until - now), 3) if self.state is BreakerState.OPEN else 0,
        }


class Replica:
    """One upstream replica: its connections, health, ejection state and breaker."""

    def __init__(self, url: str, pool: str, tier: str, settings: GatewaySettings) -> None:
        self.url = url
        self.pool = pool
        self.tier = tier
        self.client = ReplicaClient(
            url, connect_timeout=settings.connect_timeout, max_idle=settings.max_idle_per_replica
        )
        self.probe_client = ReplicaClient(url, connect_timeout=settings.health_timeout, max_idle=1)
        self.breaker = CircuitBreaker(
            window=settings.breaker_window,
            min_calls=settings.breaker_min_calls,
            failure_ratio=settings.breaker_failure_ratio,
            open_seconds=settings.breaker_open_seconds,
            probes=settings.breaker_half_open_probes,
        )
        # Healthy until a check says otherwise: a gateway restarted mid-sale serves at once.
        self.healthy = True
        # False while its check cannot even connect: nothing listens there, so not even panic routes to it.
        self.reachable = True
        self.health_failures = 0
        self.health_successes = 0
        self.last_health_error = ""
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ejection_level = 0
        self.ejections = 0
        self.in_flight = 0
        self.served = 0
        self.failed = 0

    def available(self, now: float) -> bool:
        """Healthy, not ejected, and its breaker lets a call through."""
        return self.healthy and self.ejected_until <= now and self.breaker.allows(now)

    def answering(self, now: float) -> bool:
        """Failing its check, yet answering it, not ejected, and its breaker lets a call through: panic may use it."""
        return self.reachable and self.ejected_until <= now and self.breaker.allows(now)

    def ejected(self, now: float) -> bool:
        """Passively ejected right now."""
        return self.ejected_until > now

    def status(self, now: float) -> dict[str, Any]:
        """State for the admin view."""
        return {
            "url": self.url,
            "tier": self.tier,
            "available": self.healthy and not self.ejected(now) and self.breaker.state is not BreakerState.OPEN,
            "healthy": self.healthy,
            "reachable": self.reachable,
            "last_health_error": self.last_health_error or None,
            "ejected": self.ejected(now),
            "ejected_for_seconds": round(max(0.0, self.ejected_until - now), 3),
            "ejections": self.ejections,
            "consecutive_failures": self.consecutive_failures,
            "breaker": self.breaker.status(now),
            "in_flight": self.in_flight,
            "served": self.served,
            "failed": self.failed,
        }


class Pool:
    """The replicas of one service: primaries first, the backup tier only when every primary is out."""

    def __init__(self, name: str, settings: GatewaySettings) -> None:
        self.name = name
        self.primaries = [Replica(u, name, "primary", settings) for u in settings.pool_urls(name)]
        self.backups = [Replica(u, name, "backup", settings) for u in settings.backup_urls(name)]
        self.replicas = self.primaries + self.backups
        self.max_in_flight = settings.max_in_flight_per_pool
        self.in_flight = 0
        self.shed = 0
        self.panic_routed = 0
        self.eject_after = settings.eject_consecutive_failures
        self.eject_base = settings.eject_base_seconds
        self.eject_max = settings.eject_max_seconds
        self._next = 0

    def pick(self, now: float, exclude: Replica | None = None) -> Replica | None:
        """The next available replica by round robin (primaries, then backups), other than `exclude`.

        Panic mode: when none is available, the next one that still answers its check. Every replica failing
        at once is a shared dependency's outage (or the check's fault), not every replica's: they still serve
        what does not need it and answer the rest with their own 503, which beats the gateway's blanket one.
        """
        start = self._next
        self._next = start + 1
        for tier in (self.primaries, self.backups):
            n = len(tier)
            for i in range(n):
                replica = tier[(start + i) % n]
                if replica is not exclude and replica.available(now):
                    return replica
        for tier in (self.primaries, self.backups):
            n = len(tier)
            for i in range(n):
                replica = tier[(start + i) % n]
                if replica is not exclude and replica.answering(now):
                    self.panic_routed += 1
                    PANIC_ROUTED.labels(self.name).inc()
                    return replica
        return None

    def record(self, replica: Replica, failure: bool, probe: bool, now: float) -> None:
        """Feed one call's outcome to the replica's breaker and passive ejection."""
        if replica.breaker.record(failure, probe, now):
            BREAKER_OPENS.labels(self.name, replica.url).inc()
            log.warning("breaker opened for %s replica %s", self.name, replica.url)
        if not failure:
            replica.served += 1
            replica.consecutive_failures = 0
            return
        replica.failed += 1
        replica.consecutive_failures += 1
        if replica.consecutive_failures >= self.eject_after and not replica.ejected(now):
            self._eject(replica, now)

    def _eject(self, replica: Replica, now: float) -> None:
        tier = self.primaries if replica.tier == "primary" else self.backups
        # Never the whole pool: with no replica left the backup tier (or a 503) would take all the traffic
        # on the word of a passive signal that may be the clients' fault.
        if not any(r is not replica and not r.ejected(now) for r in tier):
            return
        if now - replica.ejected_until > self.eject_max:
            replica.ejection_level = 0  # long healthy since the last ejection: start short again
        period = min(self.eject_max, self.eject_base * (2**replica.ejection_level))
        replica.ejection_level += 1
        replica.ejections += 1
        replica.ejected_until = now + period
        replica.consecutive_failures = 0
        EJECTIONS.labels(self.name, replica.url).inc()
        log.warning("ejected %s replica %s for %.1fs", self.name, replica.url, period)

    def status(self, now: float) -> dict[str, Any]:
        """State for the admin view."""
        return {
            "pool": self.name,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "shed": self.shed,
            "panic_routed": self.panic_routed,
            "replicas": [r.status(now) for r in self.replicas],
        }

    def close(self) -> None:
        """Close every pooled connection."""
        for replica in self.replicas:
            replica.client.close()
            replica.probe_client.close()


def build_pools(settings: GatewaySettings) -> dict[str, Pool]:
    """One pool per service."""
    return {name: Pool(name, settings) for name in SERVICES}


class HealthChecker:
    """Active checks: GET /healthz/ready on every replica (primary and backup) every `interval` seconds."""

    def __init__(self, pools: dict[str, Pool], settings: GatewaySettings) -> None:
        self.replicas = [r for pool in pools.values() for r in pool.replicas]
        self.interval = settings.health_interval
        self.timeout = settings.health_timeout
        self.unhealthy_after = settings.unhealthy_threshold
        self.healthy_after = settings.healthy_threshold

    async def check(self, replica: Replica) -> None:
        """Probe one replica and update its health."""
        request = b"GET %s/healthz/ready HTTP/1.1\r\nhost: %s\r\nuser-agent: gateway-health\r\n\r\n" % (
            replica.probe_client.base_path,
            replica.probe_client.host_header,
        )
        try:
            response = await replica.probe_client.request(request, b"", answer_within=self.timeout)
            ok = response.status == 200
            error = "" if ok else f"status {response.status}"
            replica.reachable = True
        except UpstreamError as exc:
            ok, error = False, exc.kind
            # A timeout may be a busy replica, which panic mode may still use; a refused connection is not.
            replica.reachable = not isinstance(exc, (UpstreamConnectError, UpstreamClosed))
        if ok:
            replica.health_failures = 0
            replica.health_successes += 1
            if not replica.healthy and replica.health_successes >= self.healthy_after:
                replica.healthy = True
                log.info("%s replica %s is healthy again", replica.pool, replica.url)
            replica.last_health_error = ""
        else:
            replica.health_successes = 0
            replica.health_failures += 1
            replica.last_health_error = error
            if replica.healthy and replica.health_failures >= self.unhealthy_after:
                replica.healthy = False
                log.warning("%s replica %s failed its health check (%s)", replica.pool, replica.url, error)

    async def run(self) -> None:
        """Check every replica, forever."""
        while True:
            await asyncio.gather(*(self.check(r) for r in self.replicas), return_exceptions=True)
            await asyncio.sleep(self.interval)


def monotonic() -> float:
    """The clock pools and breakers use."""
    return time.monotonic()

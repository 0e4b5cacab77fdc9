"""Upstream health as gauges, read from the pools at scrape time: per replica whether it takes traffic and its
breaker's state, per pool how many replicas take traffic. Nothing is counted on the proxy path.

Labels are the pool (one per service), the replica's URL and tier (a few per pool), and the breaker state.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.pools import BreakerState, Pool, monotonic

REPLICA_UP = "gateway_replica_up"
REPLICA_HEALTHY = "gateway_replica_healthy"
BREAKER_STATE = "gateway_replica_breaker_state"
POOL_AVAILABLE = "gateway_pool_available_replicas"
POOL_REPLICAS = "gateway_pool_replicas"
OPEN = BreakerState.OPEN


class PoolCollector:
    """Renders the pools of the gateways running in this process (one in production)."""

    def __init__(self) -> None:
        self.gateways: dict[int, dict[str, Pool]] = {}
        REGISTRY.register(self)

    def watch(self, pools: dict[str, Pool]) -> None:
        """Show these pools until `forget`."""
        self.gateways[id(pools)] = pools

    def forget(self, pools: dict[str, Pool]) -> None:
        """Stop showing these pools (the gateway shut down)."""
        self.gateways.pop(id(pools), None)

    def describe(self) -> Iterator[Metric]:
        """The metric names, for the registry's duplicate check."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """Every replica's state now."""
        now = monotonic()
        up, healthy, breaker, available, replicas = self._families()
        for pools in list(self.gateways.values()):
            for pool in pools.values():
                n_up = 0
                for replica in pool.replicas:
                    labels = [pool.name, replica.url, replica.tier]
                    # As the admin view tells it: `available()` would move an expired open breaker to half-open.
                    takes_traffic = replica.healthy and not replica.ejected(now) and replica.breaker.state is not OPEN
                    n_up += takes_traffic
                    up.add_metric(labels, float(takes_traffic))
                    healthy.add_metric(labels, float(replica.healthy))
                    for state in BreakerState:
                        breaker.add_metric([*labels, state.value], float(replica.breaker.state is state))
                available.add_metric([pool.name], float(n_up))
                replicas.add_metric([pool.name], float(len(pool.replicas)))
        yield from (up, healthy, breaker, available, replicas)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        replica = ["pool", "replica", "tier"]
        return (
            GaugeMetricFamily(
                REPLICA_UP, "1 while a replica takes traffic (healthy, not ejected, breaker lets calls)", labels=replica
            ),
            GaugeMetricFamily(REPLICA_HEALTHY, "1 while a replica passes its active readiness check", labels=replica),
            GaugeMetricFamily(BREAKER_STATE, "1 for a replica's current breaker state", labels=[*replica, "state"]),
            GaugeMetricFamily(POOL_AVAILABLE, "Replicas of a pool taking traffic", labels=["pool"]),
            GaugeMetricFamily(POOL_REPLICAS, "Replicas configured in a pool (both tiers)", labels=["pool"]),
        )


POOLS = PoolCollector()

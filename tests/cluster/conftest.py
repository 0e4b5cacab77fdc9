"""A Redis Cluster on loopback from the machine's redis-server: 3 masters, or 3 masters with a replica each.

The nodes listen on consecutive ports from TEST_CLUSTER_PORT_BASE (default 7101; two runs on one machine
choose bases 10 apart): the 3-master cluster on base..base+2, the replicated one on base+3..base+8. Each
node's cluster bus is its port + 10000.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

PORT_BASE = int(os.environ.get("TEST_CLUSTER_PORT_BASE", "7101"))


class ClusterNode:
    """One redis-server of the cluster, which a test may kill and start again on the same port."""

    def __init__(self, port: int, directory: Path, node_timeout_ms: int) -> None:
        self.port = port
        self.dir = directory / str(port)
        self.dir.mkdir(parents=True)
        self.node_timeout_ms = node_timeout_ms
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> SyncRedis:
        """A plain (non-cluster) connection to this node alone."""
        return SyncRedis(port=self.port, decode_responses=True, socket_timeout=5)

    def start(self) -> None:
        """Start it; its nodes.conf (kept across restarts) brings it back with its identity and slots."""
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        cmd += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--cluster-enabled", "yes"]
        cmd += ["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)

    def wait_answering(self) -> None:
        """Wait until it answers PING."""
        deadline = time.monotonic() + 10
        with self.client() as conn:
            while True:
                try:
                    if conn.ping():
                        return
                except RedisConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node on {self.port} did not start")
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL it: every client's connections to it drop at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def node_id(self) -> str:
        """Its cluster node id."""
        with self.client() as conn:
            return str(conn.execute_command("CLUSTER", "MYID"))


class LoopbackCluster:
    """A Redis Cluster of `masters` masters (slots split evenly) and `replicas_each` replicas per master."""

    def __init__(self, port_base: int, *, masters: int = 3, replicas_each: int = 0, node_timeout_ms: int = 2000):
        self.dir = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        count = masters * (1 + replicas_each)
        self.nodes = [ClusterNode(port_base + n, self.dir, node_timeout_ms) for n in range(count)]
        self.masters = self.nodes[:masters]
        self.replicas = self.nodes[masters:]

    @property
    def url(self) -> str:
        """REDIS_URL naming one node (the first master), as a service is configured."""
        return self.masters[0].url

    def start(self) -> None:
        """Start every node, give each master its share of the slots, join them, wait for cluster_state:ok."""
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_answering()
        share = REDIS_CLUSTER_HASH_SLOTS // len(self.masters)
        for n, node in enumerate(self.masters):
            last = REDIS_CLUSTER_HASH_SLOTS - 1 if n == len(self.masters) - 1 else (n + 1) * share - 1
            with node.client() as conn:
                conn.execute_command("CLUSTER", "ADDSLOTSRANGE", n * share, last)
                # Distinct epochs up front: no collision to resolve before the slots are agreed on.
                conn.execute_command("CLUSTER", "SET-CONFIG-EPOCH", n + 1)
        # Every pair meets directly: no waiting for gossip to introduce them.
        for n, node in enumerate(self.nodes):
            with node.client() as conn:
                for other in self.nodes[n + 1 :]:
                    conn.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port)
        self.wait_until(lambda: all(self.knows_every_node(node) for node in self.nodes), "the nodes to meet")
        for n, replica in enumerate(self.replicas):
            master_id = self.masters[n % len(self.masters)].node_id()
            with replica.client() as conn:
                conn.execute_command("CLUSTER", "REPLICATE", master_id)
        self.wait_ok()

    def knows_every_node(self, node: ClusterNode) -> bool:
        """Whether `node` has completed the handshake with every other node."""
        with node.client() as conn:
            lines = str(conn.execute_command("CLUSTER", "NODES")).strip().splitlines()
        return len(lines) == len(self.nodes) and not any("handshake" in line for line in lines)

    def wait_ok(self, timeout: float = 20) -> None:
        """Wait until every running node reports cluster_state:ok and its replicas are in sync."""

        def settled() -> bool:
            for node in self.nodes:
                if node.proc is None:
                    continue
                with node.client() as conn:
                    if "cluster_state:ok" not in str(conn.execute_command("CLUSTER", "INFO")):
                        return False
                    info = conn.info("replication")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
            return True

        self.wait_until(settled, "cluster_state:ok", timeout)

    @staticmethod
    def wait_until(predicate: object, what: str, timeout: float = 20) -> None:
        """Poll `predicate` (a callable) every 20 ms until it is true."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster: timed out waiting for {what}")
            time.sleep(0.02)

    def master_of(self, key: str) -> ClusterNode:
        """The master serving `key`'s slot now."""
        slot = key_slot(key.encode())
        asked = next(node for node in self.nodes if node.proc is not None)  # any node that runs knows the map
        with asked.client() as conn:
            for start, end, primary, *_ in conn.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(node for node in self.nodes if node.port == int(primary[1]))
        raise LookupError(f"slot {slot} is not served")

    def keys_on_each_master(self, prefix: str) -> list[str]:
        """One key per master, `prefix` plus a hash tag, in the order of `self.masters`."""
        found: dict[int, str] = {}
        n = 0
        while len(found) < len(self.masters):
            key = f"{prefix}{{{n}}}"
            found.setdefault(self.masters.index(self.master_of(key)), key)
            n += 1
        return [found[i] for i in range(len(self.masters))]

    def begin_migration(self, slot: int, source: ClusterNode, target: ClusterNode, keys: list[str]) -> None:
        """Start moving `slot` from `source` to `target` and move `keys` (of that slot) already."""
        with target.client() as conn:
            conn.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id())
        with source.client() as conn:
            conn.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id())
            if keys:
                conn.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)

    def end_migration(self, slot: int, target: ClusterNode) -> None:
        """Give `slot` to `target`, telling every master at once (no waiting for gossip)."""
        target_id = target.node_id()
        for node in [target, *(m for m in self.masters if m is not target)]:
            with node.client() as conn:
                conn.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def flush(self) -> None:
        """Empty every master (a cluster has database 0 only) and drop every loaded script."""
        for node in self.masters:
            if node.proc is not None:
                with node.client() as conn:
                    conn.flushall()
                    conn.script_flush()

    def stop(self) -> None:
        """Kill every node and remove their files."""
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LoopbackCluster]:
    """A 3-master Redis Cluster for the whole run."""
    # A node down is noticed after 15 s: a test that stops one has the others serving until then.
    nodes = LoopbackCluster(PORT_BASE, node_timeout_ms=15_000)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def replicated_cluster() -> Iterator[LoopbackCluster]:
    """3 masters with a replica each (its own cluster per test module: the failover tests change who is
    master); a master unreachable for 1 s is replaced by its replica."""
    nodes = LoopbackCluster(PORT_BASE + 3, replicas_each=1, node_timeout_ms=1000)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def clean_cluster(cluster: LoopbackCluster) -> LoopbackCluster:
    """The 3-master cluster, emptied (data and scripts) and with every node up and serving."""
    for node in cluster.nodes:
        if node.proc is None:
            node.start()
            node.wait_answering()
    cluster.wait_ok()
    cluster.flush()
    return cluster


@pytest.fixture
async def cluster_client(clean_cluster: LoopbackCluster) -> AsyncIterator[RedisCluster]:
    """A redis-py cluster client on the emptied cluster."""
    client = RedisCluster.from_url(clean_cluster.url, decode_responses=True)
    yield client
    await client.aclose()

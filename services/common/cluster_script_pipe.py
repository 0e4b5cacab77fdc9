"""One Lua script run on a Redis Cluster: a pipelined connection per master, each call sent to its keys' slot.

The cluster counterpart of ScriptPipe, with the same call interface. Every call carries keys of one slot (the
script's keys share a hash tag); the slot is computed here, the call queued on the pipe of the master that
serves it, and each master's pipe sends the calls of one event-loop iteration in one write, as ScriptPipe does
on a single Redis.

The slot map comes from CLUSTER SLOTS, asked on first use of the pipe and again whenever it proves stale:
- MOVED: the slot has a new owner; the call goes there, the slot is patched at once and the whole map asked
  for again (a resharding moves many slots).
- ASK: the slot is migrating; the call goes to the importing node after ASKING, the map stays as it is.
- TRYAGAIN (the keys are split between the two nodes of a migration): the call is sent again shortly.
- NOSCRIPT on one node (restarted, SCRIPT FLUSH): that node's pipe loads the script and sends the call again.
- A lost connection or a master that does not answer (failover): the calls waiting on it fail with
  ScriptPipeError as on a single Redis, and the map is asked for again, after a pause that doubles with each
  refresh that reaches no node (so a cluster that is down is not hammered), until a replica has taken over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from services.common.script_pipe import ScriptPipe, ScriptPipeError, ScriptReplyError

log = logging.getLogger(__name__)

# Redirects one call follows before it gives up (a resharding in progress moves a slot once, ASK then MOVED).
MAX_REDIRECTS = 5
TRYAGAIN_PAUSE_SECONDS = 0.02
# Between two refreshes of the map that succeed, and the pause after failed ones (doubling, capped).
REFRESH_INTERVAL_SECONDS = 0.1
REFRESH_BACKOFF_SECONDS = 0.05
REFRESH_BACKOFF_CAP_SECONDS = 2.0


class ClusterScriptPipe:
    """Runs one Lua script by SHA on a Redis Cluster, over one pipelined connection per master."""

    def __init__(
        self,
        url: str,
        script: str,
        *,
        call_timeout: float,
        connect_timeout: float,
        decode: bool = False,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 0,
    ) -> None:
        # The node REDIS_URL names: where the slot map is first asked for, and the model of every node's pipe
        # (each master's pipe waits for that master's replicas).
        self.seed = ScriptPipe(
            url,
            script,
            call_timeout=call_timeout,
            connect_timeout=connect_timeout,
            decode=decode,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
        )
        if self.seed.db:
            raise ValueError("a Redis Cluster has database 0 only: REDIS_URL must name /0")
        if self.seed.path is not None:
            raise ValueError("a Redis Cluster is reached over TCP: REDIS_URL must not name a unix socket")
        self.nodes: dict[tuple[str, int], ScriptPipe] = {(self.seed.host, self.seed.port): self.seed}
        self.slots: list[ScriptPipe | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self.refreshing: asyncio.Task[None] | None = None
        self.failed_refreshes = 0
        self.next_refresh = 0.0  # event-loop time before which no refresh starts

    async def evalsha(self, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        """Run the script with `keys` (all of one slot) and `args` on the master of their slot.

        Raises ScriptPipeError when the cluster does not answer in time (or cannot serve the slot),
        ScriptReplyError for an error reply of the script.
        """
        slot = key_slot(keys[0].encode()) if keys else 0
        pipe = self.slots[slot] or await self._owner(slot)
        for _ in range(MAX_REDIRECTS):
            try:
                return await pipe.evalsha(keys, args)
            except ScriptReplyError as exc:
                kind, _, where = str(exc).partition(" ")
                if kind == "MOVED":
                    pipe = self._moved(where, pipe)
                elif kind == "ASK":
                    return await self._node_at(where, pipe).evalsha_asking(keys, args)
                elif kind == "TRYAGAIN":
                    await asyncio.sleep(TRYAGAIN_PAUSE_SECONDS)
                elif kind == "CLUSTERDOWN":
                    raise ScriptPipeError(str(exc)) from None
                else:
                    raise
            except ScriptPipeError:
                self._refresh_soon()
                raise
        raise ScriptPipeError(f"slot {slot}: still redirected after {MAX_REDIRECTS} tries")

    def _moved(self, where: str, pipe: ScriptPipe) -> ScriptPipe:
        """The pipe of the slot's new owner (`where` is "<slot> <host>:<port>"), patched into the map."""
        owner = self._node_at(where, pipe)
        self.slots[int(where.partition(" ")[0])] = owner
        self._refresh_soon()
        return owner

    def _node_at(self, where: str, asked: ScriptPipe) -> ScriptPipe:
        """The pipe of the node a redirect names ("<slot> <host>:<port>"; no host: the node asked)."""
        host, _, port = where.rpartition(" ")[2].rpartition(":")
        return self._node(host or asked.host, int(port))

    def _node(self, host: str, port: int) -> ScriptPipe:
        pipe = self.nodes.get((host, port))
        if pipe is None:
            pipe = self.nodes[(host, port)] = self.seed.at(host, port)
        return pipe

    async def _owner(self, slot: int) -> ScriptPipe:
        """The master of `slot` once the map is known (asked for now if it is not)."""
        refreshing = self._refresh_soon()
        if refreshing is not None:
            await asyncio.shield(refreshing)  # a caller that gives up does not stop the refresh others wait on
        pipe = self.slots[slot]
        if pipe is None:
            raise ScriptPipeError(f"slot {slot}: no master known to serve it (cluster unreachable or incomplete)")
        return pipe

    def _refresh_soon(self) -> asyncio.Task[None] | None:
        """The refresh of the map under way or started now; None while failed refreshes ask for a pause."""
        if self.refreshing is None:
            loop = asyncio.get_running_loop()
            if loop.time() < self.next_refresh:
                return None
            self.refreshing = loop.create_task(self._refresh())
        return self.refreshing

    async def _refresh(self) -> None:
        """Ask the known masters, then REDIS_URL's node, then any other node seen, for the slot map; nodes
        with an open connection first (a master that just failed would make the others wait for its connect)."""
        loop = asyncio.get_running_loop()
        known = dict.fromkeys([*(p for p in self.slots if p is not None), self.seed, *self.nodes.values()])
        candidates = sorted(known, key=lambda pipe: pipe.conn is None or pipe.conn.closed)
        failure: Exception | None = None
        try:
            for pipe in candidates:
                try:
                    reply = await pipe.command("CLUSTER", "SLOTS")
                except (ScriptPipeError, ScriptReplyError) as exc:
                    failure = exc
                    continue
                self._apply(reply, pipe)
                self.failed_refreshes = 0
                self.next_refresh = loop.time() + REFRESH_INTERVAL_SECONDS
                return
            self.failed_refreshes += 1
            pause = min(REFRESH_BACKOFF_SECONDS * 2**self.failed_refreshes, REFRESH_BACKOFF_CAP_SECONDS)
            self.next_refresh = loop.time() + pause
            log.warning("Redis Cluster slot map: no node answered (%s); next try in %.2f s", failure, pause)
        finally:
            self.refreshing = None

    def _apply(self, reply: list[Any], asked: ScriptPipe) -> None:
        """Take a CLUSTER SLOTS answer: [start, end, [host, port, id], replicas...] per range of slots."""
        slots: list[ScriptPipe | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        for start, end, primary, *_replicas in reply:
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            owner = self._node(host or asked.host, int(primary[1]))
            slots[start : end + 1] = [owner] * (end - start + 1)
        self.slots = slots

    async def aclose(self) -> None:
        """Close every node's connection."""
        if self.refreshing is not None:
            self.refreshing.cancel()
        for pipe in self.nodes.values():
            await pipe.aclose()

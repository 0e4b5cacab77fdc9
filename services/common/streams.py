"""Redis Streams consumer: consumer group, retries, a dead-letter stream, and claiming stale entries.

The consumer hands entries over as read; their type, version and payload are declared in services/common/contracts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from redis.exceptions import ResponseError

from services.common.contracts import dead_letter_stream
from services.common.errors import is_transient
from services.common.resources import RedisClient

log = logging.getLogger("service.streams")

EVENTS_HANDLED = Counter("stream_events_total", "Stream entries handled", ["stream", "group", "outcome"])

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]


Entry = tuple[str, dict[str, Any]]
BatchHandler = Callable[[list[Entry]], Awaitable[None]]


@dataclass
class StreamConsumer:
    """Reads one stream in a consumer group and hands each entry to its handler at least once.

    With a `batch_handler`, a whole read is handed over at once (one transaction for many events);
    if the batch fails, its entries are retried one by one through `handler`, so one bad entry does
    not hold the others back. An entry whose handler raises stays pending and is retried after
    `claim_idle_ms`; its `max_deliveries`-th attempt is the last: failing that, it is copied to
    `<stream>:dead` and acknowledged. A failure that says a dependency is down (`is_transient`: the
    database stopped, a connection refused) is not the entry's fault: the consumer backs off, the entry
    stays pending and is never dead-lettered for it, however long the outage lasts. Entries left pending
    by a crashed consumer are claimed the same way, and a consumer restarted under its old name first
    finishes its own pending entries, so nothing is lost.
    """

    redis: RedisClient
    stream: str
    group: str
    consumer: str
    handler: Handler
    batch_handler: BatchHandler | None = None
    batch: int = 200
    block_ms: int = 1000
    claim_idle_ms: int = 15_000
    max_deliveries: int = 5
    start_id: str = "0"
    last_active: float = field(default_factory=time.monotonic)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def dead_letter_stream(self) -> str:
        """Where entries go after too many failed deliveries."""
        return dead_letter_stream(self.stream)

    async def ensure_group(self) -> None:
        """Create the group (and stream) if missing."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def stop(self) -> None:
        """Ask the loop to finish after the current batch."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until stopped; survives Redis outages by backing off."""
        backoff = 0.2
        last_claim = 0.0
        recovered = False
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                await self.ensure_group()
                if not recovered:
                    await self.recover_own_pending()
                    recovered = True
                if loop.time() - last_claim > self.claim_idle_ms / 2000:
                    await self.claim_stale()
                    last_claim = loop.time()
                await self.read_once()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # One traceback per failure streak; then a short line per retry.
                first = backoff == 0.2
                log.warning(
                    "stream consumer %s/%s failed (%s); retrying",
                    self.stream,
                    self.group,
                    type(exc).__name__,
                    exc_info=first,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _read(self, start: str, block: int | None) -> list[Entry]:
        resp: Any = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=self.batch, block=block
        )
        # RESP2 answers a list of [stream, entries]; RESP3 a mapping of stream -> entries.
        batches = resp.values() if isinstance(resp, dict) else [entries for _stream, entries in resp or []]
        return [(entry_id, fields) for entries in batches for entry_id, fields in entries if fields is not None]

    async def read_once(self) -> int:
        """Read and handle one batch of new entries; returns how many were handled."""
        return await self._handle_all(await self._read(">", self.block_ms))

    async def recover_own_pending(self) -> int:
        """Handle entries this consumer name read before a crash but never acknowledged."""
        handled = 0
        cursor = "0"
        while True:
            entries = await self._read(cursor, None)
            if not entries:
                return handled
            handled += await self._handle_all(entries)
            cursor = entries[-1][0]

    async def claim_stale(self) -> int:
        """Take over entries another consumer left pending too long; retry or dead-letter them."""
        handled = 0
        cursor = "0-0"
        while True:
            resp = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=cursor, count=self.batch
            )
            cursor, entries = resp[0], resp[1]
            if entries:
                live = [(e[0], e[1]) for e in entries if e and e[1] is not None]
                for entry_id, fields in entries:
                    if fields is None:  # deleted from the stream while pending
                        await self.redis.xack(self.stream, self.group, entry_id)
                counts = await self._delivery_counts([e[0] for e in live])
                retry = []
                for entry_id, fields in live:
                    if counts.get(entry_id, 0) >= self.max_deliveries:
                        handled += await self._handle(entry_id, fields, last_attempt=True)
                    else:
                        retry.append((entry_id, fields))
                handled += await self._handle_all(retry)
            if cursor in ("0-0", b"0-0") or not entries:
                return handled

    async def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        rows: Any = await self.redis.xpending_range(
            self.stream, self.group, min=ids[0], max=ids[-1], count=len(ids), consumername=self.consumer
        )
        return {r["message_id"]: int(r["times_delivered"]) for r in rows}

    async def _handle_all(self, entries: list[Entry]) -> int:
        if not entries:
            return 0
        self.last_active = time.monotonic()
        if self.batch_handler is not None and len(entries) > 1:
            try:
                await self.batch_handler(entries)
            except Exception as exc:
                if is_transient(exc):
                    raise  # a dependency is down: back off, the entries stay pending
                log.warning("batch of %d from %s failed; retrying one by one", len(entries), self.stream)
            else:
                await self.redis.xack(self.stream, self.group, *[e[0] for e in entries])
                EVENTS_HANDLED.labels(self.stream, self.group, "ok").inc(len(entries))
                return len(entries)
        handled = 0
        for entry_id, fields in entries:
            handled += await self._handle(entry_id, fields)
        return handled

    async def _handle(self, entry_id: str, fields: dict[str, Any], *, last_attempt: bool = False) -> int:
        try:
            await self.handler(entry_id, fields)
        except Exception as exc:
            EVENTS_HANDLED.labels(self.stream, self.group, "error").inc()
            if is_transient(exc):
                raise  # a dependency is down: back off; this says nothing about the entry
            if last_attempt:
                await self._dead_letter(entry_id, fields)
                return 0
            log.warning("handler failed for %s %s; will retry", self.stream, entry_id, exc_info=True)
            return 0
        await self.redis.xack(self.stream, self.group, entry_id)
        EVENTS_HANDLED.labels(self.stream, self.group, "ok").inc()
        return 1

    async def _dead_letter(self, entry_id: str, fields: dict[str, Any]) -> None:
        dead: dict[Any, Any] = {**fields, "source_id": entry_id, "group": self.group}
        await self.redis.xadd(self.dead_letter_stream, dead)
        await self.redis.xack(self.stream, self.group, entry_id)
        EVENTS_HANDLED.labels(self.stream, self.group, "dead_letter").inc()
        log.error("dead-lettered %s %s after %d deliveries", self.stream, entry_id, self.max_deliveries, exc_info=True)


async def group_backlog(redis: RedisClient, streams: list[str], group: str) -> dict[str, bool]:
    """For each stream: does `group` have anything left there (unread or unacknowledged entries)?

    A stream without the group counts as having work (nobody has read it yet); a missing stream has none.
    """
    out: dict[str, bool] = {}
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xinfo_groups(stream)
        answers = await pipe.execute(raise_on_error=False)
    for stream, answer in zip(streams, answers, strict=True):
        if isinstance(answer, Exception):
            out[stream] = False  # no such stream
            continue
        info = next((g for g in answer if g.get("name") == group), None)
        if info is None:
            out[stream] = True
        else:
            lag = info.get("lag")
            out[stream] = bool(int(info.get("pending") or 0)) or lag is None or bool(int(lag))
    return out


async def trim_acknowledged(redis: RedisClient, stream: str, *, required_groups: Sequence[str] = ()) -> int:
    """Drop the entries of `stream` that every consumer group has read and acknowledged; returns how many.

    The oldest entry still needed is the oldest pending one of any group, or the entry after a group's
    last delivered one. Nothing is trimmed while a group in `required_groups` does not exist yet (its
    service may not have started, and will read from the stream's start), nor from a stream without groups.
    """
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return 0  # no such stream
    if not groups or not set(required_groups) <= {str(g["name"]) for g in groups}:
        return 0
    keep_from: list[tuple[int, int]] = []
    for group in groups:
        if int(group.get("pending") or 0):
            summary = await redis.xpending(stream, group["name"])
            oldest = summary.get("min")
            if oldest:
                keep_from.append(_stream_id(oldest))
                continue
        last = _stream_id(group.get("last-delivered-id") or "0-0")
        keep_from.append((last[0], last[1] + 1))
    ms, seq = min(keep_from)
    if (ms, seq) <= (0, 0):
        return 0
    trimmed: int = await redis.xtrim(stream, minid=f"{ms}-{seq}", approximate=False)
    return trimmed


def _stream_id(value: str | bytes) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RegistryFollower:
    """One consumer per stream listed in a registry set, kept only while its group has work there.

    Every sale (or template) ever run stays listed; following each forever would hold one blocking
    Redis connection per stream per replica. Drained streams idle for `idle_seconds` are let go and
    picked up again as soon as new entries arrive.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        registry: str,
        group: str,
        make_consumer: Callable[[str], StreamConsumer],
        idle_seconds: float = 60.0,
    ) -> None:
        self.redis = redis
        self.registry = registry
        self.group = group
        self.make_consumer = make_consumer
        self.idle_seconds = idle_seconds
        self._consumers: dict[str, tuple[StreamConsumer, asyncio.Task[None]]] = {}
        # One sync at a time: two interleaved ones could stop a consumer twice or start two for one stream.
        self._syncing = asyncio.Lock()

    @property
    def followed(self) -> set[str]:
        """Streams with a running consumer."""
        return set(self._consumers)

    async def sync(self) -> None:
        """Start consumers where there is work; stop idle ones that have none left."""
        async with self._syncing:
            await self._sync()

    async def _sync(self) -> None:
        registry: set[str] = await self.redis.smembers(self.registry)  # type: ignore[assignment]
        now = time.monotonic()
        idle = [s for s, (c, _t) in self._consumers.items() if now - c.last_active > self.idle_seconds]
        waiting = [s for s in registry if s not in self._consumers]
        backlog = await group_backlog(self.redis, idle + waiting, self.group) if idle or waiting else {}
        for stream in idle:
            if not backlog.get(stream):
                consumer, task = self._consumers.pop(stream)
                consumer.stop()
                task.cancel()
        for stream in waiting:
            if backlog.get(stream):
                consumer = self.make_consumer(stream)
                self._consumers[stream] = (consumer, asyncio.create_task(consumer.run()))

    async def aclose(self) -> None:
        """Stop every consumer and wait briefly for them."""
        tasks = []
        for consumer, task in self._consumers.values():
            consumer.stop()
            task.cancel()
            tasks.append(task)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self._consumers.clear()

"""Stream backlog gauges: per stream and consumer group, the entries not yet read (lag) and read but not yet
acknowledged (pending); per stream, the length of its dead-letter stream.

Read by a periodic job (one pipelined XINFO GROUPS and XLEN per stream per tick), never on an event's path.
Labels are stream and group names: the global streams and one purchase stream per sale, so they stay as few
as the sales.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from services.common.contracts import dead_letter_stream
from services.common.metrics import GaugeTable
from services.common.resources import RedisClient

GROUP_LAG = GaugeTable(
    "stream_group_lag_entries", "Entries of a stream its consumer group has not read yet", ["stream", "group"]
)
GROUP_PENDING = GaugeTable(
    "stream_group_pending_entries", "Entries a consumer group read and has not acknowledged yet", ["stream", "group"]
)
# How often a service without a setting of its own reads its streams' backlog.
GAUGE_SECONDS = 5.0
DEAD_LETTERS = GaugeTable("stream_dead_letter_entries", "Entries in a stream's dead-letter stream", ["stream"])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def refresh_stream_gauges(redis: RedisClient, streams: Iterable[str], *, reporter: str) -> None:
    """Read the backlog of every group of `streams` (a missing stream shows nothing) into the gauges, as the
    part of `reporter` (the service watching them)."""
    names = sorted(set(streams))
    answers: list[Any] = []
    if names:
        async with redis.pipeline(transaction=False) as pipe:
            for stream in names:
                pipe.xinfo_groups(stream)
                pipe.xlen(dead_letter_stream(stream))
            answers = await pipe.execute(raise_on_error=False)
    lag: dict[tuple[str, ...], float] = {}
    pending: dict[tuple[str, ...], float] = {}
    dead: dict[tuple[str, ...], float] = {}
    for i, stream in enumerate(names):
        groups, dead_length = answers[2 * i], answers[2 * i + 1]
        if isinstance(groups, Exception):
            continue  # no such stream (yet)
        for group in groups:
            labels = (stream, _text(group.get("name")))
            # Redis cannot tell the lag (None) after some deletions: no series then, rather than a false zero.
            if group.get("lag") is not None:
                lag[labels] = float(group["lag"])
            pending[labels] = float(group.get("pending") or 0)
        dead[(stream,)] = float(dead_length) if not isinstance(dead_length, Exception) else 0.0
    GROUP_LAG.replace(lag, reporter)
    GROUP_PENDING.replace(pending, reporter)
    DEAD_LETTERS.replace(dead, reporter)


async def registered_streams(redis: RedisClient, registry: str) -> set[str]:
    """The streams a registry set lists (every sale's or template's stream of a family)."""
    return {_text(name) for name in await redis.smembers(registry)}


def stream_gauges_job(
    redis: RedisClient, streams: Callable[[], Awaitable[Iterable[str]]], *, reporter: str
) -> Callable[[], Awaitable[None]]:
    """A periodic job body: list the streams to watch, then refresh their gauges."""

    async def refresh() -> None:
        await refresh_stream_gauges(redis, await streams(), reporter=reporter)

    return refresh

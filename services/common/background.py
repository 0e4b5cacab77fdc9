"""Periodic jobs run by every replica (schedulers, sweepers, relays)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Histogram

from services.common.metrics import LATENCY_BUCKETS

log = logging.getLogger("service.background")

LOOP_LAG_PROBE_SECONDS = 0.05
LOOP_LAG = Histogram(
    "event_loop_lag_seconds",
    "How late the event loop woke a timer: the wait every ready request step had behind the loop's other work",
    buckets=LATENCY_BUCKETS,
)


async def run_every(
    seconds: float,
    name: str,
    job: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    *,
    again_now: Callable[[object], bool] | None = None,
) -> None:
    """Run `job` every `seconds` until `stop` is set; right away again when `again_now(result)` says so.

    A failure is logged (with a traceback once per failure streak) and retried at the next tick.
    """
    failing = False
    while not stop.is_set():
        try:
            result = await job()
            failing = False
            if again_now is not None and again_now(result):
                await asyncio.sleep(0)
                continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed (%s)", name, type(exc).__name__, exc_info=not failing)
            failing = True
        await asyncio.sleep(seconds)


async def probe_loop_lag(stop: asyncio.Event) -> None:
    """Sleep LOOP_LAG_PROBE_SECONDS at a time and record how much later the loop woke this task.

    A request's every await (a statement, a provider call) resumes only when the loop gets to it; the lag
    tells a slow dependency from a busy process at the moments requests are slow.
    """
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(LOOP_LAG_PROBE_SECONDS)
        LOOP_LAG.observe(max(0.0, loop.time() - start - LOOP_LAG_PROBE_SECONDS))


SHUTDOWN_WAIT_SECONDS = 5.0


async def stop_background(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Stop periodic jobs and consumers at shutdown, waiting at most SHUTDOWN_WAIT_SECONDS for them.

    A driver may swallow a cancellation mid-query; shutdown must not wait on such a task forever.
    """
    stop.set()
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_SECONDS)


# The collector's thresholds once start-up is frozen (CPython's defaults: 700, 10, 10). With the defaults
# each flashsale process of `make bench` ran ~5,000 young and ~40 full collections a minute, the full ones
# ~50 ms each (the caches that fill during a sale), and the purchase p99 was 69-75 ms; with these it is
# 18 ms, at 3-5 % more purchases/s (docs/adr/0005-garbage-collector.md). Cycles are still collected: the
# young generation every 10,000 net new objects, a full pass considered every 1,000 young ones.
GC_THRESHOLDS = (10_000, 10, 100)


def freeze_startup_objects() -> None:
    """Move everything allocated at start-up out of the garbage collector's sight, and collect less often.

    Modules, settings, routes and pools live as long as the process; without this every full
    collection walks them again, a pause that lands on whatever request is being served. The
    thresholds (GC_THRESHOLDS) make the collections of a busy process rarer: most of a request's
    objects are freed by reference counting, and each collection pass has a fixed cost.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

"""Periodic jobs run by every replica (schedulers, sweepers, relays)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("service.background")


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


def freeze_startup_objects() -> None:
    """Move everything allocated at start-up out of the garbage collector's sight.

    Modules, settings, routes and pools live as long as the process; without this every full
    collection walks them again, a pause that lands on whatever request is being served.
    """
    gc.collect()
    gc.freeze()

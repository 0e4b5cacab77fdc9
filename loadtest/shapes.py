"""Load shapes as plain data: a flash crowd, steps, a soak, each in multiples of a configured normal peak.

A pre-sale test runs the chain at 5-10x the normal peak (`LOADTEST_NORMAL_PEAK` users, `LOADTEST_MULTIPLE`).
The locustfile turns the stages into a Locust LoadTestShape; keeping them here keeps them testable without
Locust (and its gevent patching) loaded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stage:
    """Hold `users` (reached at `spawn_rate` users/s) until `until` seconds on the shape's clock."""

    until: float
    users: int
    spawn_rate: float


def flash_crowd(*, peak: int, multiple: float, sale_starts_in: float, hold: float, ramp: float = 3.0) -> list[Stage]:
    """The normal crowd browsing before the sale, then `multiple` x peak within `ramp` s of the start, held."""
    target = max(1, round(peak * multiple))
    before = max(1, peak // 2)
    ramp_from = max(0.0, sale_starts_in - ramp)
    return [
        Stage(until=ramp_from, users=before, spawn_rate=max(1.0, before / 2)),
        Stage(until=sale_starts_in + hold, users=target, spawn_rate=max(1.0, (target - before) / ramp)),
    ]


def steps(*, peak: int, multiples: tuple[float, ...] = (1, 2, 4, 6, 8, 10), step_seconds: float = 30.0) -> list[Stage]:
    """One step per multiple of the peak, `step_seconds` each: the knee of the latency curve shows between two."""
    out: list[Stage] = []
    for n, multiple in enumerate(multiples, start=1):
        users = max(1, round(peak * multiple))
        out.append(Stage(until=n * step_seconds, users=users, spawn_rate=max(1.0, users / 5)))
    return out


def soak(*, peak: int, multiple: float, seconds: float, ramp: float = 30.0) -> list[Stage]:
    """`multiple` x peak, reached over `ramp` s and held for `seconds`: leaks and slow drift show over time."""
    users = max(1, round(peak * multiple))
    return [Stage(until=ramp + seconds, users=users, spawn_rate=max(1.0, users / ramp))]


def smoke(*, users: int, seconds: float) -> list[Stage]:
    """A few users for a short while (CI)."""
    return [Stage(until=seconds, users=users, spawn_rate=float(users))]


def journeys(*, users: int, spawn_rate: float, seconds: float) -> list[Stage]:
    """`users` shoppers, on at `spawn_rate` users/s, each walking the chain once; `seconds` bounds the run, which
    the locustfile ends as soon as every shopper has walked it (the demo's crowd)."""
    return [Stage(until=seconds, users=users, spawn_rate=spawn_rate)]


def at(stages: list[Stage], t: float) -> Stage | None:
    """The stage in force at time t, or None once the last one is over (the test stops)."""
    for stage in stages:
        if t < stage.until:
            return stage
    return None

"""The collector policy every service applies once started (docs/adr/0005-garbage-collector.md)."""

from __future__ import annotations

import gc

from services.common.background import GC_THRESHOLDS, freeze_startup_objects


def test_startup_objects_are_frozen_and_collections_are_rarer_but_still_collect_cycles() -> None:
    freeze_startup_objects()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # rarer young collections than CPython's default
    assert gc.isenabled()  # cycles are still collected

    class Node:
        other: Node | None = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2  # the cycle is garbage the collector still finds

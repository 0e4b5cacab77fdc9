"""What the launcher started and how it stops it: only its own processes, services before backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import state

HAVE_PROC = Path("/proc/self/stat").exists()


@pytest.mark.skipif(not HAVE_PROC, reason="process identity by start time needs /proc")
def test_down_leaves_alone_a_process_that_took_a_recorded_pid(stack_dir: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # The recorded process is gone and the kernel gave its pid to another one (a different start time).
        record = {"pid": stranger.pid, "start": "1", "kind": "service", "log": ""}
        state.save_state({"processes": {"flashsale-1": record}})
        assert state.stop_recorded(state.load_state()) == ["flashsale-1"]
        assert stranger.poll() is None, "down signalled a process it did not start"
        assert not state.STATE_FILE.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_down_stops_what_it_started(stack_dir: Path) -> None:
    record = state.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], env=dict(os.environ))
    record["kind"] = "service"
    state.save_state({"processes": {"sleeper": record}})
    assert state.is_running(record)
    assert state.stop_recorded(state.load_state()) == ["sleeper"]
    assert not state.is_running(record)
    assert not state.STATE_FILE.exists()


def test_down_stops_order_before_the_providers_it_calls_and_backends_last(stack_dir: Path) -> None:
    gone = {"pid": 2**22 + 12345, "start": "1", "log": ""}  # no such process: each stop is a no-op
    names = ["flashsale-1", "order-1", "coupon-2", "inventory-1", "order-2", "paysim-1", "coupon-1", "paysim-2"]
    names += ["inventory-2", "redis"]
    procs = {name: {**gone, "kind": "backend" if name == "redis" else "service"} for name in names}
    assert state.stop_recorded({"processes": procs}) == [
        "order-2",
        "order-1",
        "coupon-2",
        "coupon-1",
        "paysim-2",
        "paysim-1",
        "flashsale-1",
        "inventory-2",
        "inventory-1",
        "redis",
    ]

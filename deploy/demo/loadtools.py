"""The load tools of loadtest/ (seed, checker, targets), imported the way the drills import them.

They are scripts run by path that import their neighbours by name (`from targets import ...`), so their
directory goes on the path once, here, and every demo module takes them from this one.
"""

from __future__ import annotations

import sys

from deploy.state import ROOT

LOADTEST_DIR = ROOT / "loadtest"
if str(LOADTEST_DIR) not in sys.path:
    sys.path.append(str(LOADTEST_DIR))

import checker  # noqa: E402  (loadtest/ is on the path just above)
import seed  # noqa: E402
import targets  # noqa: E402

__all__ = ["checker", "seed", "targets"]

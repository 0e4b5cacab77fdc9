"""Locust headless in its own process: how the drills and the demo set their crowd on the chain.

The crowd is loadtest/locustfile.py's shoppers; the run directory (run.json from the seeder), the targets and the
shape come through the environment (the locustfile's docstring lists it). Locust patches the standard
library with gevent the moment it is imported, so it never runs inside the caller's process. It leaves Locust's
CSVs and HTML report, locust.log, and the shoppers' own logs (loadtest/outcomes.py) in the run directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from loadtest.targets import ROOT, Targets, env_for

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


def start_crowd(
    run_dir: Path, targets: Targets, shape: Mapping[str, str], env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start Locust headless on the run's sale with the shape's settings (LOADTEST_SHAPE and its knobs).

    The shoppers call the caller's targets; `env` is the environment Locust starts from (default: this process's).
    """
    base = os.environ if env is None else env
    settings = {**base, "LOADTEST_RUN_DIR": str(run_dir), **env_for(targets), **shape}
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
    cmd += ["--csv", str(run_dir / "locust"), "--html", str(run_dir / "locust.html"), "--loglevel", "WARNING"]
    with (run_dir / "locust.log").open("wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=settings, stdout=log, stderr=subprocess.STDOUT)


def wait_for_crowd(locust: subprocess.Popen[bytes], timeout: float) -> int:
    """Locust's exit status once it is done; after `timeout` s it is stopped (SIGINT: it still writes its reports)."""
    try:
        return locust.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        locust.send_signal(signal.SIGINT)
        return locust.wait(timeout=30)


def locust_log_tail(run_dir: Path, lines: int = 20) -> str:
    """The end of the run's locust.log (what Locust said when it failed)."""
    try:
        return "\n".join((run_dir / "locust.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no locust.log)"

"""Fixtures of the launcher's tests: a .stack/ of each test's own, and free ports."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import state


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stack_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A .stack/ of the test's own, so the developer's state and backends stay untouched."""
    base = Path(tempfile.mkdtemp(prefix="stack-test-"))
    base.chmod(0o755)  # as root, PostgreSQL runs as an unprivileged account that must reach its data directory
    directory = base / ".stack"
    paths = {
        "STACK_DIR": directory,
        "STATE_FILE": directory / "state.json",
        "LOCK_FILE": directory / "launcher.lock",
        "LOG_DIR": directory / "logs",
        "DEFAULT_ENV_FILE": directory / "backends.env",
    }
    for name, value in paths.items():
        monkeypatch.setattr(state, name, value)
    yield directory
    shutil.rmtree(base, ignore_errors=True)

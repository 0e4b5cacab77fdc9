"""The local launcher: its URLs and env file, `down` touching only what it started, private backends."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.deploy.launcher import stack

HAVE_PROC = Path("/proc/self/stat").exists()
HAVE_POSTGRES = bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


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
        monkeypatch.setattr(stack, name, value)
    yield directory
    shutil.rmtree(base, ignore_errors=True)


def test_server_url_is_asyncpg_on_the_postgres_database() -> None:
    assert (
        stack.server_database_url("postgresql://app:s3cret@db.internal:6543/flashsale")
        == "postgresql+asyncpg://app:s3cret@db.internal:6543/postgres"
    )


def test_each_service_gets_its_own_database_on_the_server() -> None:
    server = "postgresql+asyncpg://postgres@127.0.0.1:5440/postgres"
    assert stack.database_url_for(server, "flashsale") == "postgresql+asyncpg://postgres@127.0.0.1:5440/flashsale"


def test_env_file_reads_back_unchanged_in_a_shell(tmp_path: Path) -> None:
    backends = stack.Backends(
        "redis://:pa ss&word@127.0.0.1:6390/0", "postgresql+asyncpg://postgres@127.0.0.1:5440/postgres", "", ""
    )
    env_file = tmp_path / "backends.env"
    stack.write_env_file(env_file, backends)
    script = f'set -a && . "{env_file}" && set +a && printf "%s\\n%s\\n" "$REDIS_URL" "$DATABASE_URL"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env={})
    assert out.stdout.splitlines() == [backends.redis_url, backends.database_url]


def test_replica_env_points_the_service_at_its_own_database() -> None:
    spec = next(s for s in stack.SERVICES if s.name == "flashsale")
    backends = stack.Backends(
        "redis://127.0.0.1:6390/0", "postgresql+asyncpg://postgres@127.0.0.1:5440/postgres", "", ""
    )
    env = stack.service_env(spec, "flashsale-2", 8112, backends)
    assert env["FLASHSALE_DATABASE_URL"] == "postgresql+asyncpg://postgres@127.0.0.1:5440/flashsale"
    assert env["REDIS_URL"] == "redis://127.0.0.1:6390/0"
    assert env["REPLICA_ID"] == "flashsale-2"
    assert env["APP_ENV"] == "dev"


@pytest.mark.skipif(not HAVE_PROC, reason="process identity by start time needs /proc")
def test_down_leaves_alone_a_process_that_took_a_recorded_pid(stack_dir: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # The recorded process is gone and the kernel gave its pid to another one (a different start time).
        record = {"pid": stranger.pid, "start": "1", "kind": "service", "log": ""}
        stack.save_state({"processes": {"flashsale-1": record}})
        assert stack.stop_recorded(stack.load_state()) == ["flashsale-1"]
        assert stranger.poll() is None, "down signalled a process it did not start"
        assert not stack.STATE_FILE.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_down_stops_what_it_started(stack_dir: Path) -> None:
    record = stack.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], env=dict(os.environ))
    record["kind"] = "service"
    stack.save_state({"processes": {"sleeper": record}})
    assert stack.is_running(record)
    assert stack.stop_recorded(stack.load_state()) == ["sleeper"]
    assert not stack.is_running(record)
    assert not stack.STATE_FILE.exists()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server on PATH")
def test_private_redis_appends_with_everysec_fsync_and_down_stops_it(
    stack_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "PRIVATE_REDIS_PORT", free_port())
    try:
        url = stack.start_private_redis(stack.load_state(), embedded=False)
        record = stack.load_state()["processes"]["redis"]
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert client.config_get("dir")["dir"] == str(stack_dir / "redis")
        finally:
            client.close()
    finally:
        stack.stop_recorded(stack.load_state())
    assert not stack.is_running(record)
    assert not stack.redis_answers(url)


@pytest.mark.skipif(not HAVE_POSTGRES, reason="no PostgreSQL binaries on this machine")
def test_private_postgres_trusts_the_postgres_user_and_down_stops_it(
    stack_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "PRIVATE_POSTGRES_PORT", free_port())
    try:
        url = stack.start_private_postgres(stack.load_state(), embedded=False)
        record = stack.load_state()["processes"]["postgres"]
        assert url.startswith("postgresql+asyncpg://postgres@127.0.0.1:") and url.endswith("/postgres")
        assert stack.postgres_answers(url)
        assert Path(record["data_dir"]).is_relative_to(stack_dir)
    finally:
        stack.stop_recorded(stack.load_state())
    assert not stack.is_running(record)
    assert not stack.postgres_answers(url)

"""Redis and PostgreSQL for the stack: URLs, the env file, private servers and stopping them."""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from deploy import backends, state
from tests.deploy.conftest import free_port

HAVE_POSTGRES = bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def test_server_url_is_asyncpg_on_the_postgres_database() -> None:
    assert (
        backends.server_database_url("postgresql://app:s3cret@db.internal:6543/flashsale")
        == "postgresql+asyncpg://app:s3cret@db.internal:6543/postgres"
    )


def test_each_service_gets_its_own_database_on_the_server() -> None:
    server = "postgresql+asyncpg://postgres@127.0.0.1:5440/postgres"
    assert backends.database_url_for(server, "flashsale") == "postgresql+asyncpg://postgres@127.0.0.1:5440/flashsale"


def test_env_file_reads_back_unchanged_in_a_shell(tmp_path: Path) -> None:
    found = backends.Backends(
        "redis://:pa ss&word@127.0.0.1:6390/0", "postgresql+asyncpg://postgres@127.0.0.1:5440/postgres", "", ""
    )
    env_file = tmp_path / "backends.env"
    backends.write_env_file(env_file, found)
    script = f'set -a && . "{env_file}" && set +a && printf "%s\\n%s\\n" "$REDIS_URL" "$DATABASE_URL"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env={})
    assert out.stdout.splitlines() == [found.redis_url, found.database_url]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server on PATH")
def test_private_redis_appends_with_everysec_fsync_and_down_stops_it(
    stack_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "PRIVATE_REDIS_PORT", free_port())
    try:
        url = backends.start_private_redis(state.load_state(), embedded=False)
        record = state.load_state()["processes"]["redis"]
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert client.config_get("dir")["dir"] == str(stack_dir / "redis")
        finally:
            client.close()
    finally:
        state.stop_recorded(state.load_state())
    assert not state.is_running(record)
    assert not backends.redis_answers(url)


@pytest.mark.skipif(not HAVE_POSTGRES, reason="no PostgreSQL binaries on this machine")
def test_private_postgres_trusts_the_postgres_user_and_down_stops_it(
    stack_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "PRIVATE_POSTGRES_PORT", free_port())
    try:
        url = backends.start_private_postgres(state.load_state(), embedded=False)
        record = state.load_state()["processes"]["postgres"]
        assert url.startswith("postgresql+asyncpg://postgres@127.0.0.1:") and url.endswith("/postgres")
        assert backends.postgres_answers(url)
        assert Path(record["data_dir"]).is_relative_to(stack_dir)
    finally:
        state.stop_recorded(state.load_state())
    assert not state.is_running(record)
    assert not backends.postgres_answers(url)

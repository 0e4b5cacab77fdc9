"""The benchmarks' own backends: a logical Redis DB flushed per run, and databases recreated per run.

Only what a benchmark owns is wiped: the logical DB it names (`--redis-db`) and databases whose name marks them
as a benchmark's (`..._bench...`), so a mistyped option cannot drop the stack's own data.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.engine import make_url

from loadtest.bench.errors import BenchError
from loadtest.bench.results import ROOT

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


def bench_redis_url(url: str, db: int) -> str:
    """REDIS_URL pointed at logical DB `db` (path for redis://, rediss://; `?db=` for unix://)."""
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
    if parts.scheme == "unix":
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
        query = f"{query}&db={db}" if query else f"db={db}"
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
    raise BenchError(f"REDIS_URL scheme {parts.scheme!r} has no logical DBs; use redis://, rediss:// or unix://")


def bench_database_url(url: str, name: str) -> str:
    """DATABASE_URL (server level) pointed at the benchmark's own database."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.set(database=name).render_as_string(hide_password=False)


def urls_from_environment(redis_db: int, database: str) -> tuple[str, str]:
    """(logical Redis DB `redis_db`, database `database`) on the servers that REDIS_URL and DATABASE_URL name."""
    redis_url = bench_redis_url(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), redis_db)
    return redis_url, bench_database_url(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL), database)


async def _recreate_database(url: str, *, create: bool) -> None:
    parsed = make_url(url)
    admin_dsn = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
        if create:
            await conn.execute(f'CREATE DATABASE "{parsed.database}"')
    finally:
        await conn.close()


def recreate_database(url: str, *, service: str | None = None) -> None:
    """Drop the benchmark's database, then migrate a fresh one for `service` (or create it empty without one):
    earlier runs' rows must not weigh on this one."""
    name = make_url(url).database or ""
    if "bench" not in name.split("_"):
        raise BenchError(f"refusing to drop database {name!r}: a benchmark database is named *_bench*")
    try:
        asyncio.run(_recreate_database(url, create=service is None))
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"PostgreSQL at {make_url(url).render_as_string()} is not usable: {exc}") from exc
    if service is None:
        return
    proc = subprocess.run(
        [sys.executable, "-m", "services.common.migrate", service, url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"migration failed:\n{proc.stdout}{proc.stderr}")


def flush_redis(url: str) -> None:
    """FLUSHDB on the benchmark's logical DB only."""
    client = Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    except (OSError, RedisError) as exc:
        raise BenchError(f"Redis at {url} is not usable: {exc}") from exc
    finally:
        client.close()

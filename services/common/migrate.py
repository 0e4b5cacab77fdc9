"""Run a service's Alembic migrations: `python -m services.common.migrate [--wait] flashsale [DATABASE_URL]`.

Creates the service's database first when it does not exist (the local stack and tests need that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import sys
import time
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

SERVICES_DIR = Path(__file__).resolve().parent.parent


async def ensure_database(url: str) -> None:
    """CREATE DATABASE for the URL's database name if it is missing."""
    parsed = make_url(url)
    name = parsed.database
    admin_dsn = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def alembic_config(service: str, url: str) -> Config:
    """Alembic config pointing at services/<service>/migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SERVICES_DIR / service / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(service: str, url: str) -> None:
    """Bring the service's database to the newest revision."""
    asyncio.run(ensure_database(url))
    command.upgrade(alembic_config(service, url), "head")


async def current_revisions(url: str) -> set[str]:
    """The revisions the database is at (empty: no database, no schema yet, or the server does not answer)."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return set()
    try:
        rows = await conn.fetch("SELECT version_num FROM alembic_version")
    except asyncpg.UndefinedTableError:
        return set()
    finally:
        await conn.close()
    return {row["version_num"] for row in rows}


def head_revisions(service: str, url: str) -> set[str]:
    """The revisions this code's migrations end at."""
    return set(ScriptDirectory.from_config(alembic_config(service, url)).get_heads())


async def wait_for_head(service: str, url: str, *, seconds: float, interval: float = 2.0) -> bool:
    """Wait until the database is at this code's head (another process migrates it); False on timeout.

    A pod's init container runs this so the service never starts against a schema older than its code,
    while the release's one migration Job does the upgrade.
    """
    wanted = head_revisions(service, url)
    deadline = time.monotonic() + seconds
    while True:
        if await current_revisions(url) == wanted:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


def database_url_of(service: str) -> str:
    """The service's own DATABASE_URL setting (<PREFIX>DATABASE_URL from the environment)."""
    module = importlib.import_module(f"services.{service}.config").__dict__
    cls = next(v for k, v in module.items() if k.endswith("Settings") and k != "BaseServiceSettings")
    return str(cls().database_url)


def main(argv: list[str]) -> None:
    """Command-line entry point: upgrade to head, or (--wait) wait until another process has."""
    parser = argparse.ArgumentParser(prog="python -m services.common.migrate")
    parser.add_argument("--wait", action="store_true", help="wait for the database to reach head, do not migrate")
    parser.add_argument("service")
    parser.add_argument("database_url", nargs="?", help="default: the service's <PREFIX>DATABASE_URL")
    args = parser.parse_args(argv)
    url = args.database_url or database_url_of(args.service)
    if not args.wait:
        upgrade(args.service, url)
        return
    seconds = float(os.environ.get("MIGRATE_WAIT_SECONDS", "600"))
    if not asyncio.run(wait_for_head(args.service, url, seconds=seconds)):
        heads = sorted(head_revisions(args.service, url))
        raise SystemExit(f"{args.service}: the database did not reach revision {heads} in {seconds:g} s")


if __name__ == "__main__":
    main(sys.argv[1:])

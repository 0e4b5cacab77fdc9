"""Run a service's Alembic migrations: `python -m services.common.migrate flashsale [DATABASE_URL]`.

Creates the service's database first when it does not exist (the local stack and tests need that).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
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


def main(argv: list[str]) -> None:
    """Command-line entry point."""
    if not argv:
        raise SystemExit("usage: python -m services.common.migrate SERVICE [DATABASE_URL]")
    service = argv[0]
    if len(argv) > 1:
        url = argv[1]
    else:
        import importlib

        settings_cls = importlib.import_module(f"services.{service}.config").__dict__
        cls = next(v for k, v in settings_cls.items() if k.endswith("Settings") and k != "BaseServiceSettings")
        url = cls().database_url
    upgrade(service, url)


if __name__ == "__main__":
    main(sys.argv[1:])

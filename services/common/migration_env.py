"""The body of every service's Alembic env.py: async (asyncpg) migrations, one migrator at a time."""

from __future__ import annotations

import asyncio
import zlib

from alembic import context
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine


def run_migrations(metadata: MetaData, service: str) -> None:
    """Run the migrations Alembic asked for (offline SQL or online against the configured URL)."""
    config = context.config
    url = config.get_main_option("sqlalchemy.url") or ""
    # Replicas may migrate at once on start; an advisory lock per service makes one wait for the other.
    lock_id = zlib.crc32(f"migrate:{service}".encode())

    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
        return

    def run(connection: Connection) -> None:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({lock_id})")
            context.run_migrations()

    async def online() -> None:
        engine = create_async_engine(url)
        async with engine.connect() as connection:
            await connection.run_sync(run)
        await engine.dispose()

    asyncio.run(online())

"""The inventory service's Redis: a read mirror of each SKU's committed `available` (hash tag `{inv:<sku>}`)
and the low-stock alerts stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from services.common.streams import encode_event

LUA_DIR = Path(__file__).parent / "lua"


def stock_key(sku: str) -> str:
    """Hash: available (as last committed) and seq (the ledger id that wrote it)."""
    return f"{{inv:{sku}}}:stock"


class StockMirror:
    """Writes committed counters to Redis; PostgreSQL stays the truth."""

    def __init__(self, redis: Redis, alerts_stream: str) -> None:
        self.redis = redis
        self.alerts_stream = alerts_stream
        self._mirror = redis.register_script((LUA_DIR / "mirror.lua").read_text())

    async def write(self, *, sku: str, available: int, seq: int) -> None:
        """Store `available`; a late writer with an older ledger sequence changes nothing."""
        await self._mirror(keys=[stock_key(sku)], args=[available, seq])

    async def overwrite(self, *, sku: str, available: int, seq: int) -> None:
        """Set the mirror from PostgreSQL whatever it holds (repair after drift or data loss)."""
        await self.redis.hset(stock_key(sku), mapping={"available": available, "seq": seq})

    async def read(self, sku: str) -> int | None:
        """The mirrored `available`, or None when Redis has not seen the SKU."""
        value = await self.redis.hget(stock_key(sku), "available")
        return None if value is None else int(value)

    async def read_many(self, skus: list[str]) -> list[int | None]:
        """The mirrored `available` of several SKUs, in order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sku in skus:
                pipe.hget(stock_key(sku), "available")
            values: list[Any] = await pipe.execute()
        return [None if v is None else int(v) for v in values]

    async def publish_alert(self, payload: dict[str, Any]) -> str:
        """Append one low-stock alert to the alerts stream."""
        entry: dict[Any, Any] = encode_event("inventory.low_stock", payload)
        entry_id = await self.redis.xadd(self.alerts_stream, entry, maxlen=100_000, approximate=True)
        return str(entry_id)

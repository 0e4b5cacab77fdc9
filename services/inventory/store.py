"""The inventory service's Redis: a read mirror of each SKU's committed `available` (hash tag `{inv:<sku>}`)
and the low-stock alerts stream. Inventory's global keys (job leases) share the tag `{inv}`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.common.contracts import EventType, encode_event
from services.common.resources import RedisClient

LUA_DIR = Path(__file__).parent / "lua"


def stock_key(sku: str) -> str:
    """Hash: available (as last committed) and seq (the ledger id that wrote it)."""
    return f"{{inv:{sku}}}:stock"


def job_lock_key(job: str) -> str:
    """Lease of one periodic job (reconciliation): the replica running it."""
    return f"{{inv}}:job:{job}"


class StockMirror:
    """Writes committed counters to Redis; PostgreSQL stays the truth."""

    def __init__(self, redis: RedisClient, alerts_stream: str) -> None:
        self.redis = redis
        self.alerts_stream = alerts_stream
        self._mirror = redis.register_script((LUA_DIR / "mirror.lua").read_text())
        self._repair = redis.register_script((LUA_DIR / "repair.lua").read_text())

    async def write(self, *, sku: str, available: int, seq: int) -> None:
        """Store `available`; a late writer with an older ledger sequence changes nothing."""
        await self._mirror(keys=[stock_key(sku)], args=[available, seq])

    async def overwrite(self, *, sku: str, available: int, seq: int) -> None:
        """Set the mirror from PostgreSQL whatever it holds (repair after drift or data loss)."""
        await self.redis.hset(stock_key(sku), mapping={"available": available, "seq": seq})

    async def repair(self, *, sku: str, available: int, seq: int) -> bool:
        """Set the mirror from PostgreSQL unless a newer change already wrote it; True when rewritten."""
        return bool(await self._repair(keys=[stock_key(sku)], args=[available, seq]))

    async def read(self, sku: str) -> int | None:
        """The mirrored `available`, or None when Redis has not seen the SKU (or holds garbage for it)."""
        return _units(await self.redis.hget(stock_key(sku), "available"))

    async def read_many(self, skus: list[str]) -> list[int | None]:
        """The mirrored `available` of several SKUs, in order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sku in skus:
                pipe.hget(stock_key(sku), "available")
            values: list[Any] = await pipe.execute()
        return [_units(v) for v in values]

    async def publish_event(self, event_type: EventType, payload: dict[str, Any]) -> str:
        """Append one alert (low stock, replenishment reminder) to the alerts stream; returns its entry id."""
        entry: dict[Any, Any] = encode_event(event_type, payload)
        entry_id = await self.redis.xadd(self.alerts_stream, entry, maxlen=100_000, approximate=True)
        return str(entry_id)


def _units(value: Any) -> int | None:
    # A garbled copy reads as missing: reads fall back to PostgreSQL and reconciliation reports it.
    try:
        return None if value is None else int(value)
    except ValueError:
        return None

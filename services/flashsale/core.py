"""What every flashsale flow shares: one Redis pool and one engine, the stock store, the in-memory catalog,
the sold-out flags, and the one way a sale's record changes (locked, audited, announced to the replicas).

The flows (purchase.py, storefront.py, sales.py, lifecycle.py, schedule.py, reconciliation.py) each hold
this core rather than a copy of its parts, so a sale changed by one flow is what every other flow sees.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.logs import request_id_var
from services.common.resources import RedisClient
from services.flashsale import errors
from services.flashsale.clients import InventoryClient, OrderRecordClient
from services.flashsale.config import FlashSaleSettings
from services.flashsale.guards import SoldOutFlags
from services.flashsale.models import AuditEntry, Sale, SaleState
from services.flashsale.schemas import SaleOut
from services.flashsale.store import NOTIFY_CHANNEL, StockStore

log = logging.getLogger("flashsale.core")

SYSTEM_ACTOR = "system"
# States whose stock is loaded in Redis: the gate decides them, not only the record.
WARM_STATES = {SaleState.SCHEDULED, SaleState.LIVE, SaleState.PAUSED}


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def epoch_ms(dt: datetime) -> int:
    """A time as Redis keeps it: milliseconds since the epoch."""
    return int(dt.timestamp() * 1000)


def from_epoch_ms(value: str | None) -> datetime | None:
    """A time Redis kept as epoch milliseconds, if it kept one."""
    return datetime.fromtimestamp(int(value) / 1000, UTC) if value else None


def threshold_units(quantity: int, pct: int) -> int:
    """Remaining units at or below which the low-stock alert fires."""
    return math.ceil(quantity * pct / 100)


def snapshot(sale: Sale) -> dict[str, Any]:
    """The sale as JSON-ready data, for the audit log and the catalog."""
    return SaleOut.model_validate(sale).model_dump(mode="json")


def effective_state(
    recorded: SaleState, redis_state: str | None, starts_at: datetime, ends_at: datetime, now: datetime
) -> SaleState:
    """The state a buyer meets: Redis (the gate) and the window win over a lagging record."""
    if recorded in (SaleState.DRAFT, SaleState.ENDED):
        return recorded
    if now >= ends_at:
        return SaleState.ENDED
    if redis_state == SaleState.PAUSED.value:
        return SaleState.PAUSED
    if recorded == SaleState.SCHEDULED and now >= starts_at:
        return SaleState.LIVE
    return recorded


@dataclass
class CatalogEntry:
    """What the storefront and the purchase path need to know of a sale without a DB call."""

    id: int
    data: dict[str, Any]
    state: SaleState
    starts_at: datetime
    ends_at: datetime
    updated_at: datetime


def catalog_entry(sale: Sale) -> CatalogEntry:
    """The catalog's copy of a sale row."""
    return CatalogEntry(sale.id, snapshot(sale), SaleState(sale.state), sale.starts_at, sale.ends_at, sale.updated_at)


class SaleCore:
    """The pools, clients and per-process memory the flows share, and the record-changing steps they repeat."""

    def __init__(
        self,
        *,
        settings: FlashSaleSettings,
        redis: RedisClient,
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sessions = sessions
        self.store = StockStore(
            redis,
            settings.redis_url,
            cluster=settings.redis_cluster,
            wait_replicas=settings.purchase_wait_replicas,
            wait_timeout_ms=settings.purchase_wait_timeout_ms,
        )
        self.sold_out = SoldOutFlags(settings.sold_out_cache_seconds)
        # One dict for the life of the process, refreshed in place: a flow may keep a reference to it.
        self.catalog: dict[int, CatalogEntry] = {}
        self.inventory = InventoryClient(settings) if settings.inventory_url else None
        self.orders = OrderRecordClient(settings) if settings.order_url else None

    async def aclose(self) -> None:
        """Close the clients of other services and the purchase connection."""
        for client in (self.inventory, self.orders):
            if client is not None:
                await client.aclose()
        await self.store.aclose()

    def remember(self, sale: Sale) -> None:
        """Put a sale this replica just committed into its catalog (newer than any refresh read so far)."""
        self.catalog[sale.id] = catalog_entry(sale)

    async def notify(self, message: str) -> None:
        """Tell the other replicas (sold out, buyable again, catalog changed); a lost message only delays them."""
        try:
            await self.redis.spublish(NOTIFY_CHANNEL, message)
        except RedisError:
            log.warning("could not publish %s", message)

    async def audit(
        self,
        session: AsyncSession,
        *,
        actor: str,
        action: str,
        sale_id: int | None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> AuditEntry:
        """Add an audit entry to the session: it commits with the change it records, or not at all."""
        entry = AuditEntry(
            actor=actor,
            action=action,
            sale_id=sale_id,
            before=before,
            after=after,
            request_id=request_id_var.get() or None,
            note=note,
        )
        session.add(entry)
        return entry

    async def locked(self, session: AsyncSession, sale_id: int) -> Sale:
        """The sale row, locked until the session ends: one change at a time per sale, on every replica."""
        sale = await session.scalar(select(Sale).where(Sale.id == sale_id).with_for_update())
        if sale is None:
            raise errors.SaleNotFound(f"No sale {sale_id}")
        return sale

    async def current_state(self, sale: Sale) -> SaleState:
        """The sale's state as a buyer meets it, asking Redis when the stock is loaded there."""
        redis_state = None
        if SaleState(sale.state) in WARM_STATES:
            redis_state = (await self.store.live_status(sale.id)).get("state")
        return effective_state(SaleState(sale.state), redis_state, sale.starts_at, sale.ends_at, utcnow())

    async def allocate(self, sale: Sale) -> None:
        """Make the warehouse allocation match the sale's quantity; called before the sale's change commits,
        so a refusal (409 INSUFFICIENT_STOCK, SKU_NOT_FOUND) or an unreachable warehouse changes nothing."""
        if self.inventory is not None:
            await self.inventory.set_allocation(sale_id=sale.id, sku=sale.sku, allocated=sale.quantity)

    def redis_config(self, sale: Sale) -> dict[str, Any]:
        """The sale's configuration as the purchase script reads it."""
        return {
            "state": sale.state,
            "starts": epoch_ms(sale.starts_at),
            "ends": epoch_ms(sale.ends_at),
            "limit": sale.per_user_limit,
            "threshold": threshold_units(sale.quantity, sale.low_stock_threshold_pct),
            "policy": sale.low_stock_policy,
            "price": sale.price,
            "currency": sale.currency,
            "sku": sale.sku,
        }

    async def warm(self, sale: Sale, *, reset: bool, held: dict[str, Any] | None = None) -> None:
        """Load the sale into Redis; `held` overrides fields (state, window) that must wait for the commit."""
        outcome = await self.store.warm(
            sale_id=sale.id,
            incarnation=str(epoch_ms(sale.created_at)),
            quantity=sale.quantity,
            config={**self.redis_config(sale), **(held or {})},
            reset=reset,
        )
        if outcome == "STARTED":
            raise errors.SaleAlreadyStarted("Units were already reserved; the stock can no longer be reset")
        if outcome == "STALE":
            raise errors.StaleStock(
                f"Redis holds stock of an earlier sale {sale.id} (the database was recreated); "
                f"clear its {{fs:{sale.id}}} keys or point at another Redis"
            )

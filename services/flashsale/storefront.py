"""What storefronts read: the sales this replica serves (its catalog, from PostgreSQL) with their live
state and stock (from Redis, read at most once per short interval however large the crowd polling it)."""

from __future__ import annotations

import time
from datetime import timedelta

from redis.exceptions import RedisError
from sqlalchemy import select

from services.flashsale import errors
from services.flashsale.core import WARM_STATES, CatalogEntry, SaleCore, catalog_entry, effective_state, utcnow
from services.flashsale.metrics import count_view
from services.flashsale.models import Sale, SaleState
from services.flashsale.schemas import SaleView


class Storefront:
    """The catalog refresh, a sale's countdown and remaining stock, and the list of live and upcoming sales."""

    def __init__(self, core: SaleCore) -> None:
        self.core = core
        self._status_cache: dict[int, tuple[float, dict[str, str]]] = {}

    async def refresh_catalog(self) -> None:
        """Reload the sales this replica serves from PostgreSQL."""
        async with self.core.sessions() as session:
            recent = utcnow() - timedelta(days=1)
            query = select(Sale).where((Sale.state != SaleState.ENDED.value) | (Sale.ended_at > recent))
            rows = (await session.scalars(query.order_by(Sale.starts_at))).all()
        fresh = {s.id: catalog_entry(s) for s in rows}
        catalog = self.core.catalog
        # A change this replica committed while the rows were read is newer than what was read: a sale
        # started or created meanwhile must not vanish from the storefront until the next refresh.
        for sale_id, entry in catalog.items():
            read = fresh.get(sale_id)
            if (read is None and entry.state != SaleState.ENDED) or (read and entry.updated_at > read.updated_at):
                fresh[sale_id] = entry
        # In place and without an await in between: no flow ever sees a half-refreshed catalog.
        catalog.clear()
        catalog.update(fresh)

    async def _status(self, sale_id: int) -> dict[str, str]:
        # A crowd polls the countdown; one Redis read per replica per short interval is enough.
        now = time.monotonic()
        cached = self._status_cache.get(sale_id)
        if cached and cached[0] > now:
            return cached[1]
        try:
            status = await self.core.store.live_status(sale_id)
        except RedisError:
            if cached:  # Redis down: nothing sells, so the last status read still tells the stock
                return cached[1]
            raise
        self._status_cache[sale_id] = (now + self.core.settings.status_cache_seconds, status)
        return status

    async def view(self, sale_id: int) -> SaleView:
        """A sale's storefront detail: countdown and live remaining stock."""
        entry = self.core.catalog.get(sale_id)
        if entry is None or entry.state == SaleState.DRAFT:
            raise errors.SaleNotFound(f"No sale {sale_id}")
        count_view(self.core, sale_id)
        try:
            status = await self._status(sale_id)
        except RedisError:
            raise errors.StockUnavailable("Live stock is unavailable right now", headers={"Retry-After": "1"}) from None
        return self._view(entry, status)

    def _view(self, entry: CatalogEntry, status: dict[str, str]) -> SaleView:
        now = utcnow()
        data = entry.data
        state = effective_state(entry.state, status.get("state"), entry.starts_at, entry.ends_at, now)
        quantity = int(status.get("quantity", data["quantity"]))
        remaining = int(status.get("remaining", data["quantity"] if state != SaleState.ENDED else 0))
        return SaleView(
            id=entry.id,
            sku=data["sku"],
            title=data["title"],
            price=data["price"],
            original_price=data["original_price"],
            currency=data["currency"],
            per_user_limit=data["per_user_limit"],
            state=state.value,
            starts_at=entry.starts_at,
            ends_at=entry.ends_at,
            server_time=now,
            seconds_to_start=max(0.0, (entry.starts_at - now).total_seconds()),
            seconds_to_end=max(0.0, (entry.ends_at - now).total_seconds()),
            quantity=quantity,
            remaining=remaining,
            sold_out=remaining <= 0 and state in (SaleState.LIVE, SaleState.PAUSED),
        )

    async def list_public(self) -> list[SaleView]:
        """Live and upcoming sales, soonest first."""
        out = []
        now = utcnow()
        # A copy: the catalog is refreshed in place, maybe while a status read below is awaited.
        for entry in list(self.core.catalog.values()):
            if entry.state not in WARM_STATES or entry.ends_at <= now:
                continue
            try:
                status = await self._status(entry.id)
            except RedisError:
                status = {}
            out.append(self._view(entry, status))
        out.sort(key=lambda v: v.starts_at)
        return out

"""What one buyer may still buy in a sale: the caller's own numbers, read from the live gate (Redis)."""

from __future__ import annotations

from redis.exceptions import RedisError

from services.flashsale import errors
from services.flashsale.core import SaleCore, effective_state, utcnow
from services.flashsale.models import SaleState
from services.flashsale.schemas import BuyerAllowance


async def buyer_allowance(core: SaleCore, *, sale_id: int, user_id: str) -> BuyerAllowance:
    """Bought, limit and how many more units the buyer may buy (never another buyer's numbers)."""
    entry = core.catalog.get(sale_id)
    if entry is None or entry.state == SaleState.DRAFT:
        raise errors.SaleNotFound(f"No sale {sale_id}")
    try:
        bought, status = await core.store.buyer_position(sale_id, user_id)
    except RedisError:
        raise errors.StockUnavailable("Live stock is unavailable right now") from None
    state = effective_state(entry.state, status.get("state"), entry.starts_at, entry.ends_at, utcnow())
    limit = int(status.get("limit", entry.data["per_user_limit"]))
    remaining = int(status.get("remaining", 0)) if state != SaleState.ENDED else 0
    may_buy = max(0, min(limit - bought, remaining))
    return BuyerAllowance(
        sale_id=sale_id, state=state.value, bought=bought, limit=limit, may_buy=may_buy, remaining=remaining
    )

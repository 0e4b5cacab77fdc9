"""The sale lifecycle's admin transitions: schedule, start, pause, resume, stop.

Redis (the gate) and PostgreSQL (the record) cannot change in one step, so the steps are ordered for
the failure of any one of them to leave a sale that does not sell, or one that sells and whose
purchase events are read. Opening a sale (schedule, start):

1. register the sale's purchase stream (harmless while nothing sells);
2. load the stock and configuration into Redis with the state and window held as they were before;
3. commit the record;
4. open the gate in Redis (compare-and-set on the held state).

A failure before the commit leaves the record as it was and Redis not selling any more than before. A
failure of step 4 leaves a record ahead of Redis (the sale does not sell yet): the answer says so and
the settlement job brings Redis to the recorded state. Closing a sale (pause, stop) writes Redis first,
so a failed commit makes it sell less, never more; resuming writes Redis after the commit.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from services.flashsale import errors
from services.flashsale.core import SaleCore, epoch_ms, snapshot, utcnow
from services.flashsale.models import Sale, SaleState

log = logging.getLogger("flashsale.lifecycle")

# Where each admin action may start from.
TRANSITIONS: dict[str, tuple[set[SaleState], SaleState]] = {
    "schedule": ({SaleState.DRAFT}, SaleState.SCHEDULED),
    "start": ({SaleState.DRAFT, SaleState.SCHEDULED}, SaleState.LIVE),
    "pause": ({SaleState.LIVE}, SaleState.PAUSED),
    "resume": ({SaleState.PAUSED}, SaleState.LIVE),
    "stop": ({SaleState.DRAFT, SaleState.SCHEDULED, SaleState.LIVE, SaleState.PAUSED}, SaleState.ENDED),
}
OPENING = ("schedule", "start")


def _check_window(sale: Sale, action: str) -> None:
    now = utcnow()
    if action == "schedule" and sale.ends_at <= now:
        raise errors.InvalidTransition("The sale's window is already over")
    if action in ("start", "resume") and sale.ends_at <= now:
        raise errors.InvalidTransition("The sale's window is over; change ends_at first")


def _apply(sale: Sale, action: str, target: SaleState) -> None:
    now = utcnow()
    if action == "start" and sale.starts_at > now:
        sale.starts_at = now  # starting by hand opens the window now
    sale.state = target.value
    if target == SaleState.LIVE and sale.went_live_at is None:
        sale.went_live_at = now
    if target == SaleState.ENDED:
        sale.ended_at = now


async def transition(core: SaleCore, *, actor: str, sale_id: int, action: str) -> dict[str, Any]:
    """schedule, start, pause, resume or stop a sale."""
    allowed, target = TRANSITIONS[action]
    async with core.sessions.begin() as session:
        sale = await core.locked(session, sale_id)
        current = await core.current_state(sale)
        if current not in allowed:
            raise errors.InvalidTransition(f"Cannot {action} a sale that is {current.value}")
        _check_window(sale, action)
        before = snapshot(sale)
        # What Redis may say until the record commits: the state and window the sale had before.
        held = {"state": sale.state, "starts": epoch_ms(sale.starts_at)}
        _apply(sale, action, target)
        if action in OPENING:
            await core.warm(sale, reset=False, held=held)
        elif current != SaleState.DRAFT and action != "resume":
            # Stopping selling goes to Redis first: if the commit then fails, the sale sells less, not more.
            await core.store.set_state(sale.id, target.value)
        await session.flush()
        await session.refresh(sale)
        after = snapshot(sale)
        await core.audit(session, actor=actor, action=action, sale_id=sale_id, before=before, after=after)
    core.remember(sale)
    await core.notify("catalog")
    if action in OPENING:
        await _open_gate(core, sale, held_state=str(held["state"]))
    elif action == "resume":
        # Selling again goes to Redis only once the record says so (a failed write here is put right by
        # the settlement job, which brings Redis to the recorded state).
        await core.store.set_state(sale.id, target.value)
    return after


async def _open_gate(core: SaleCore, sale: Sale, *, held_state: str) -> None:
    """Let Redis sell as the committed record says; a failure leaves the sale not selling, for a while."""
    try:
        await core.store.advance_state(
            sale.id, expected=held_state, new=sale.state, fields={"starts": epoch_ms(sale.starts_at)}
        )
    except RedisError as exc:
        log.error("sale %s is recorded %s but Redis still holds it %s: %s", sale.id, sale.state, held_state, exc)
        raise errors.StockUnavailable(
            f"The sale is recorded as {sale.state}, but live stock did not open yet; it opens once Redis is "
            "reachable (the settlement job applies it): do not repeat the call"
        ) from None

"""Flashsale's Redis access: key layout and the Lua scripts, loaded once and called by SHA.

Every key of one sale carries the hash tag `{fs:<sale_id>}`, so each script call touches one
Redis Cluster slot. Flashsale's global keys (the stream registry, job leases, orphan sightings, the
notification channel) share the tag `{fs}`: one master holds all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.contracts import PURCHASE_STREAM_REGISTRY
from services.common.resources import RedisClient, open_script_pipe
from services.common.topology import ClusterMode

LUA_DIR = Path(__file__).parent / "lua"
# Set of every sale's purchase stream (the order service follows each one).
STREAM_REGISTRY = PURCHASE_STREAM_REGISTRY
# Sharded pub/sub channel between replicas: sold out, buyable again, catalog changed (SPUBLISH/SSUBSCRIBE).
NOTIFY_CHANNEL = "{fs}:notify"
# Hash "<sale id>:<sku>" -> when an allocation of a sale id with no sale was first seen (epoch seconds).
ORPHANS_KEY = "{fs}:orphan-allocations"


def _tag(sale_id: int) -> str:
    return f"{{fs:{sale_id}}}"


def job_lock_key(job: str) -> str:
    """Lease of one periodic job (settlement, reconciliation): the replica running it this tick."""
    return f"{{fs}}:job:{job}"


def alert_relayed_key(sale_id: int, entry_id: str) -> str:
    """Marker that one alert of a sale's alert stream reached the global stream and webhooks."""
    return f"{_tag(sale_id)}:alert-relayed:{entry_id}"


def sale_key(sale_id: int) -> str:
    """Hash with the sale's configuration, stock counters and attempt counters."""
    return f"{_tag(sale_id)}:sale"


def bought_key(sale_id: int) -> str:
    """Hash of user id -> units currently held or bought."""
    return f"{_tag(sale_id)}:bought"


def reservations_key(sale_id: int) -> str:
    """Hash of reservation id -> 'user|quantity|state'."""
    return f"{_tag(sale_id)}:res"


def idempotency_key(sale_id: int, user_id: str, key: str) -> str:
    """One purchase answer per user and Idempotency-Key (length-prefixed: no two pairs share a key)."""
    return f"{_tag(sale_id)}:idem:{len(user_id)}:{user_id}:{key}"


def events_stream(sale_id: int) -> str:
    """Purchase events of one sale (consumed by the order service)."""
    return f"{_tag(sale_id)}:events"


def alerts_stream(sale_id: int) -> str:
    """Low-stock and sold-out events of one sale, relayed to the global alerts stream."""
    return f"{_tag(sale_id)}:alerts"


@dataclass(frozen=True, slots=True)
class PurchaseOutcome:
    """What the purchase script decided."""

    kind: str
    reservation_id: str = ""
    quantity: int = 0
    remaining: int = 0
    crossed_threshold: bool = False
    sold_out: bool = False
    paused: bool = False
    detail: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class ReleaseOutcome:
    """What the release script did."""

    kind: str
    remaining: int = 0
    was_sold_out: bool = False


@dataclass(frozen=True, slots=True)
class RebuildOutcome:
    """What the rebuild script found and wrote."""

    remaining_before: int | None
    remaining: int
    reserved: int
    sold: int
    in_flight: int
    excess: int


class StockStore:
    """The activity stock of every sale, in Redis."""

    def __init__(
        self,
        redis: RedisClient,
        redis_url: str,
        *,
        cluster: ClusterMode = "auto",
        wait_replicas: int = 0,
        wait_timeout_ms: int = 0,
    ) -> None:
        self.redis = redis
        # The purchase decision, on the hot path: concurrent purchases share one pipelined connection (every
        # call of an event-loop iteration in one write); the other scripts go through the redis-py pool.
        self._purchase = open_script_pipe(
            redis_url,
            (LUA_DIR / "purchase.lua").read_text(),
            cluster=cluster,
            call_timeout=5,
            connect_timeout=2,
            decode=True,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
        )
        # The sold-out path's replay look-up, a read-only script on a connection of its own.
        self._replay = open_script_pipe(
            redis_url,
            (LUA_DIR / "replay.lua").read_text(),
            cluster=cluster,
            call_timeout=5,
            connect_timeout=2,
            decode=True,
        )
        self._release = redis.register_script((LUA_DIR / "release.lua").read_text())
        self._confirm = redis.register_script((LUA_DIR / "confirm.lua").read_text())
        self._warm = redis.register_script((LUA_DIR / "warm.lua").read_text())
        self._restock = redis.register_script((LUA_DIR / "restock.lua").read_text())
        self._advance = redis.register_script((LUA_DIR / "advance_state.lua").read_text())
        self._drain = redis.register_script((LUA_DIR / "drain.lua").read_text())
        self._rebuild = redis.register_script((LUA_DIR / "rebuild.lua").read_text())

    async def aclose(self) -> None:
        """Close the purchase connection (the redis-py pool is the caller's)."""
        await self._purchase.aclose()
        await self._replay.aclose()

    async def reserve_stock(
        self,
        *,
        sale_id: int,
        user_id: str,
        quantity: int,
        request_fingerprint: str,
        idempotency: str,
        reservation_id: str,
        idempotency_ttl: int,
        reserved_at: str,
        event_extra: str = "",
        traceparent: str = "",
    ) -> PurchaseOutcome:
        """Run the purchase script: one round trip, all-or-nothing; a traceparent rides into the event."""
        args: list[Any] = [
            user_id,
            quantity,
            request_fingerprint,
            reservation_id,
            idempotency_ttl,
            sale_id,
            reserved_at,
            event_extra,
        ]
        if traceparent:
            args.append(traceparent)  # absent while tracing is off: the script then writes no such field
        res = await self._purchase.evalsha(
            [
                sale_key(sale_id),
                bought_key(sale_id),
                reservations_key(sale_id),
                idempotency_key(sale_id, user_id, idempotency),
                events_stream(sale_id),
                alerts_stream(sale_id),
            ],
            args,
        )
        kind = res[0]
        if kind == "OK":
            return PurchaseOutcome(
                kind="OK",
                reservation_id=res[1],
                quantity=quantity,
                remaining=int(res[2]),
                crossed_threshold=res[3] == 1,
                sold_out=res[4] == 1,
                paused=res[5] == 1,
            )
        if kind == "REPLAY":
            return PurchaseOutcome(kind="REPLAY", reservation_id=res[1], quantity=int(res[2]))
        return PurchaseOutcome(kind=kind, detail=tuple(res[1:]))

    async def stored_answer(
        self, *, sale_id: int, user_id: str, idempotency: str, request_fingerprint: str
    ) -> PurchaseOutcome:
        """The first answer to this key if it was accepted (REPLAY), KEY_REUSED, or NONE; changes nothing."""
        res = await self._replay.evalsha([idempotency_key(sale_id, user_id, idempotency)], [request_fingerprint])
        if res[0] == "REPLAY":
            return PurchaseOutcome(kind="REPLAY", reservation_id=res[1], quantity=int(res[2]))
        return PurchaseOutcome(kind=res[0])

    async def release_reservation(self, *, sale_id: int, reservation_id: str) -> ReleaseOutcome:
        """Give a reservation's units back; a second call for the same reservation does nothing."""
        res = await self._release(
            keys=[sale_key(sale_id), bought_key(sale_id), reservations_key(sale_id)], args=[reservation_id]
        )
        if res[0] == "RELEASED":
            return ReleaseOutcome("RELEASED", remaining=int(res[1]), was_sold_out=res[2] == 1)
        return ReleaseOutcome(res[0])

    async def confirm_reservation(self, *, sale_id: int, reservation_id: str) -> str:
        """Mark a reservation paid; returns CONFIRMED, ALREADY or UNKNOWN."""
        res = await self._confirm(keys=[sale_key(sale_id), reservations_key(sale_id)], args=[reservation_id])
        return str(res[0])

    async def warm(self, *, sale_id: int, incarnation: str, quantity: int, config: dict[str, Any], reset: bool) -> str:
        """Load configuration (and, the first time, stock); OK, STARTED (reset refused) or STALE."""
        args: list[Any] = ["1" if reset else "0", quantity, incarnation]
        for field, value in config.items():
            args += [field, value]
        # The stream is registered before the sale can sell: every purchase event it takes is then read.
        await self.register_stream(sale_id)
        res = await self._warm(keys=[sale_key(sale_id)], args=args)
        return str(res[0])

    async def register_stream(self, sale_id: int) -> None:
        """Put the sale's purchase stream in the registry the order service reads (idempotent)."""
        await self.redis.sadd(STREAM_REGISTRY, events_stream(sale_id))

    async def add_stock(self, *, sale_id: int, units: int, threshold: int, operation: str) -> str:
        """Add units once per operation id; returns OK, DONE (applied before) or NOT_FOUND."""
        res = await self._restock(keys=[sale_key(sale_id), f"{_tag(sale_id)}:op:{operation}"], args=[units, threshold])
        return str(res[0])

    async def advance_state(
        self, sale_id: int, *, expected: str, new: str, fields: dict[str, str | int] | None = None
    ) -> str:
        """Set `new` (and `fields` with it) only if Redis still says `expected`; returns the state Redis holds
        afterwards."""
        args: list[Any] = [expected, new]
        for field, value in (fields or {}).items():
            args += [field, value]
        return str(await self._advance(keys=[sale_key(sale_id)], args=args))

    async def set_state(self, sale_id: int, state: str) -> None:
        """Mirror a state change; the purchase script reads it."""
        await self.redis.hset(sale_key(sale_id), "state", state)

    async def live_status(self, sale_id: int) -> dict[str, str]:
        """State, remaining and quantity, as the storefront polls them."""
        fields = ("state", "remaining", "quantity", "sold_out_at")
        values: list[str | None] = await self.redis.hmget(sale_key(sale_id), list(fields))  # type: ignore[assignment]
        return {k: v for k, v in zip(fields, values, strict=True) if v}

    async def counters(self, sale_id: int) -> dict[str, str]:
        """Every counter of the sale hash (stats)."""
        data: dict[str, str] = await self.redis.hgetall(sale_key(sale_id))  # type: ignore[assignment]
        return data

    async def sale_alerts(self, sale_id: int, *, after: str | None, limit: int) -> list[tuple[str, dict[str, str]]]:
        """The sale's alert stream, oldest first, from just after entry `after` (or the start)."""
        entries: list[tuple[str, dict[str, str]]] = await self.redis.xrange(
            alerts_stream(sale_id), min=f"({after}" if after else "-", max="+", count=limit
        )  # type: ignore[assignment]
        return entries

    async def add_attempts(self, counts: dict[int, dict[str, int]]) -> None:
        """Flush attempt counters counted locally (rejections answered without Redis)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sale_id, by_field in counts.items():
                for field, n in by_field.items():
                    pipe.hincrby(sale_key(sale_id), field, n)
            await pipe.execute()

    async def buyer_position(self, sale_id: int, user_id: str) -> tuple[int, dict[str, str]]:
        """A buyer's units and the sale's state, remaining and limit, read together in one round trip."""
        fields = ("state", "remaining", "limit")
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(bought_key(sale_id), user_id)
            pipe.hmget(sale_key(sale_id), list(fields))
            bought, values = await pipe.execute()
        return int(bought or 0), {k: v for k, v in zip(fields, values, strict=True) if v}

    async def user_bought(self, sale_id: int, user_id: str) -> int:
        """Units a user holds or bought in a sale."""
        return int(await self.redis.hget(bought_key(sale_id), user_id) or 0)

    async def drain_ended(self, sale_id: int) -> tuple[int, int, int] | None:
        """Move an ended sale's remaining units to `returned`; (returned, reserved, sold), or None when the
        sale is not ended in Redis or has no Redis data."""
        res = await self._drain(keys=[sale_key(sale_id)], args=[])
        if res[0] != "OK":
            return None
        return int(res[1]), int(res[2]), int(res[3])

    async def reservations(self, sale_id: int) -> dict[str, tuple[str, int, str]]:
        """Every reservation Redis holds for a sale: id -> (user id, quantity, reserved|paid|released)."""
        out: dict[str, tuple[str, int, str]] = {}
        async for rid, value in self.redis.hscan_iter(reservations_key(sale_id), count=2000):
            user, qty, state = value.rsplit("|", 2)
            out[rid] = (user, int(qty), state)
        return out

    async def rebuild(
        self,
        *,
        sale_id: int,
        incarnation: str,
        quantity: int,
        returned: int,
        config: dict[str, Any],
        known: list[tuple[str, str, int, str]],
    ) -> RebuildOutcome:
        """Recompute a sale's counters from the order record (see rebuild.lua); re-register its stream."""
        args: list[Any] = [incarnation, quantity, returned, len(config)]
        for field, value in config.items():
            args += [field, value]
        for reservation_id, user_id, qty, stock in known:
            args += [reservation_id, user_id, qty, stock]
        await self.register_stream(sale_id)
        res = await self._rebuild(keys=[sale_key(sale_id), bought_key(sale_id), reservations_key(sale_id)], args=args)
        return RebuildOutcome(
            remaining_before=int(res[1]) if int(res[1]) >= 0 else None,
            remaining=int(res[2]),
            reserved=int(res[3]),
            sold=int(res[4]),
            in_flight=int(res[5]),
            excess=int(res[6]),
        )

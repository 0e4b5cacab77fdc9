"""Per-process guards in front of the purchase script: sold-out memory and a per-user rate limit."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class SoldOutFlags:
    """Per-process memory of sold-out sales, so refusals skip the purchase script (they still look up the
    key once: a replay of an accepted purchase keeps its first answer).

    A flag lives `ttl` seconds; a `buyable:<id>` notification (stock came back) clears it sooner.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._until: dict[int, float] = {}

    def mark(self, sale_id: int) -> None:
        """Remember that the sale is sold out."""
        self._until[sale_id] = time.monotonic() + self.ttl

    def clear(self, sale_id: int) -> None:
        """Forget it: stock came back."""
        self._until.pop(sale_id, None)

    def is_sold_out(self, sale_id: int) -> bool:
        """True while the flag is fresh."""
        until = self._until.get(sale_id)
        if until is None:
            return False
        if until < time.monotonic():
            del self._until[sale_id]
            return False
        return True


class UserRateLimiter:
    """A token bucket per user on this replica: a cheap guard against hammering the buy button.

    A retry of a key that is in flight or was accepted is free (same intent, answered from the stored
    reply); a retry of a refused key pays like a new attempt. Buckets live in an LRU with a hard cap.
    """

    RECENT_KEYS = 4

    def __init__(
        self, rate: float, burst: int, max_users: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = float(burst)
        self.max_users = max_users
        # user -> [tokens, last refill, accepted keys]
        self._buckets: OrderedDict[str, tuple[float, float, list[str]]] = OrderedDict()
        self._in_flight: dict[tuple[str, str], int] = {}

    def allow(self, user_id: str, key: str) -> bool:
        """Take one token unless this is a retry of an accepted or in-flight key."""
        now = self.clock()
        bucket = self._buckets.get(user_id)
        if bucket is None:
            self._buckets[user_id] = (self.burst - 1, now, [])
            if len(self._buckets) > self.max_users:
                self._buckets.popitem(last=False)
            return True
        self._buckets.move_to_end(user_id)
        tokens, last, keys = bucket
        if key in keys or (user_id, key) in self._in_flight:
            return True
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[user_id] = (tokens, now, keys)
            return False
        self._buckets[user_id] = (tokens - 1, now, keys)
        return True

    def begin(self, user_id: str, key: str) -> None:
        """A request with this key is being decided."""
        self._in_flight[(user_id, key)] = self._in_flight.get((user_id, key), 0) + 1

    def end(self, user_id: str, key: str, *, accepted: bool) -> None:
        """The request was decided; remember accepted keys so their replays stay free."""
        ident = (user_id, key)
        left = self._in_flight.get(ident, 1) - 1
        if left <= 0:
            self._in_flight.pop(ident, None)
        else:
            self._in_flight[ident] = left
        bucket = self._buckets.get(user_id)
        if accepted and bucket is not None and key not in bucket[2]:
            bucket[2].append(key)
            del bucket[2][: -self.RECENT_KEYS]

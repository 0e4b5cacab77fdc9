"""Per-user and per-IP token buckets in Redis, per class of route (shopping, purchase, admin); fails open.

The checks made in one event-loop iteration go to Redis together (gateway/lua/token_buckets.lua): under a
crowd a gateway process decides several requests per round trip. On a single Redis they are one script
call. On a Redis Cluster one call may only take keys of one slot, so the batch is split by slot: one call
per slot, and every master's calls of the iteration leave in one write (one round trip per master). A
request whose user and address buckets sit on two slots is decided by both calls: it passes when both
pass, and when one refuses, the token the other took is given back in the next batch (ADR 0039).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from enum import StrEnum
from pathlib import Path

from redis.crc import key_slot

from gateway.config import GatewaySettings
from services.common.cluster_script_pipe import ClusterScriptPipe
from services.common.resources import open_script_pipe
from services.common.script_pipe import ScriptPipeError, ScriptReplyError

log = logging.getLogger("gateway.ratelimit")

SCRIPT = (Path(__file__).parent / "lua" / "token_buckets.lua").read_text()

# A bucket's script arguments: whole microseconds between two tokens, and the burst.
_Rate = tuple[str, str]
# One entry of a batch: bucket keys, their rates, and where the answer goes (None: a give-back, no answer).
_Check = tuple[list[str], list[_Rate], "asyncio.Future[int] | None"]
# What one script call decides for one entry: the entry's index in the batch, and its keys and rates there.
_Part = tuple[int, list[str], list[_Rate]]


def _bucket(rate: float, burst: int) -> _Rate:
    """A bucket's script arguments: whole microseconds between two tokens (rounded to nearest), and the burst."""
    return str(int(1_000_000 / rate + 0.5)), str(burst)


class LimitClass(StrEnum):
    """Which buckets a request draws from; the value is the buckets' key prefix."""

    SHOPPING = "g"
    PURCHASE = "p"
    # Admin routes called by an admin: ops scripts, limited per admin identity at their own rate.
    ADMIN = "a"


def bucket_key(limits: LimitClass, owner: str, identity: str) -> str:
    """One token bucket: its class of route, whose it is (`u` a user, `ip` an address), and who.

    No hash tag: on a cluster the buckets spread over every slot, and a batch is split by slot instead.
    """
    return f"rl:{limits}:{owner}:{identity}"


class RateLimiter:
    """Decides whether a request may pass; returns the seconds to wait when it may not."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.redis = open_script_pipe(
            settings.redis_url,
            SCRIPT,
            cluster=settings.redis_cluster,
            call_timeout=settings.ratelimit_timeout,
            connect_timeout=settings.ratelimit_timeout,
        )
        self.enabled = settings.ratelimit_enabled
        self.retry_seconds = settings.ratelimit_retry_seconds
        self.closed_until = 0.0  # while Redis is failing, skip it instead of paying a timeout per request
        # Rates as the script takes them, per request: (interval, burst) of each bucket, the interval being
        # the whole microseconds between two tokens.
        user, ip = _bucket(settings.user_rate, settings.user_burst), _bucket(settings.ip_rate, settings.ip_burst)
        p_user = _bucket(settings.purchase_user_rate, settings.purchase_user_burst)
        p_ip = _bucket(settings.purchase_ip_rate, settings.purchase_ip_burst)
        admin = _bucket(settings.admin_rate, settings.admin_burst)
        # Keyed by (class, a user known). An admin request always has its user: the admin role was checked.
        self.rates: dict[tuple[LimitClass, bool], list[_Rate]] = {
            (LimitClass.SHOPPING, True): [user, ip],
            (LimitClass.SHOPPING, False): [ip],
            (LimitClass.PURCHASE, True): [p_user, p_ip],
            (LimitClass.PURCHASE, False): [p_ip],
            (LimitClass.ADMIN, True): [admin],
            (LimitClass.ADMIN, False): [ip],
        }
        # On a cluster each script call takes the keys of one slot; on a single Redis the batch is one call.
        self.by_slot = isinstance(self.redis, ClusterScriptPipe)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: list[_Check] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def check(self, user_id: str | None, ip: str, limits: LimitClass) -> int:
        """0 when the request may pass, else the Retry-After seconds; fails open when Redis does not answer.

        Takes a token from the user's bucket (when there is a user) and from the IP's; an admin request
        from its admin's bucket only.
        """
        if not self.enabled:
            return 0
        if time.monotonic() < self.closed_until:
            return 0
        if user_id is None:
            keys = [bucket_key(limits, "ip", ip)]
        elif limits is LimitClass.ADMIN:
            keys = [bucket_key(limits, "u", user_id)]
        else:
            keys = [bucket_key(limits, "u", user_id), bucket_key(limits, "ip", ip)]
        loop = self.loop
        if loop is None:
            # Kept: on Python 3.11 every lookup of the running loop is a getpid() system call.
            loop = self.loop = asyncio.get_running_loop()
        answer: asyncio.Future[int] = loop.create_future()
        self._queue((keys, self.rates[limits, user_id is not None], answer))
        wait_ms = await answer
        if wait_ms <= 0:
            return 0
        return max(1, math.ceil(wait_ms / 1000))

    def _queue(self, check: _Check) -> None:
        """Add a check to the batch of this loop iteration (the first one schedules the batch's send)."""
        if not self.pending:
            assert self.loop is not None
            self.loop.call_soon(self._flush)
        self.pending.append(check)

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        assert self.loop is not None
        task = self.loop.create_task(self._decide(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _split(self, batch: list[_Check]) -> list[list[_Part]]:
        """The batch as script calls: one per slot on a cluster (in batch order within each), one on a single Redis."""
        calls: dict[int, list[_Part]] = {}
        for index, (keys, rates, _answer) in enumerate(batch):
            if not self.by_slot:
                calls.setdefault(0, []).append((index, keys, rates))
                continue
            parts: dict[int, _Part] = {}
            for key, rate in zip(keys, rates, strict=True):
                part = parts.setdefault(key_slot(key.encode()), (index, [], []))
                part[1].append(key)
                part[2].append(rate)
            for slot, part in parts.items():
                calls.setdefault(slot, []).append(part)
        return list(calls.values())

    async def _call(self, parts: list[_Part], batch: list[_Check]) -> list[int]:
        """One script call: the waits of its parts, in order."""
        keys: list[str] = []
        args = [str(len(parts))]
        for index, part_keys, rates in parts:
            keys += part_keys
            # A give-back names its bucket count negated: the script returns their tokens.
            args.append(str(len(rates) if batch[index][2] is not None else -len(rates)))
            for interval, burst in rates:
                args += [interval, burst]
        waits = [int(w) for w in await self.redis.evalsha(keys, args)]
        if len(waits) != len(parts):
            raise ScriptReplyError(f"rate limit script answered {len(waits)} of {len(parts)} checks")
        return waits

    async def _decide(self, batch: list[_Check]) -> None:
        calls = self._split(batch)
        waits = [0] * len(batch)
        passed: list[list[_Part]] = [[] for _ in batch]  # per entry, its parts that took their tokens
        try:
            # Started together: every call of one master leaves in the same write.
            answers = await asyncio.gather(*(self._call(parts, batch) for parts in calls), return_exceptions=True)
            failure = next((a for a in answers if isinstance(a, BaseException)), None)
            if failure is not None and not isinstance(failure, ScriptPipeError | ScriptReplyError):
                raise failure
            if failure is not None:
                # DESIGN: the stock decision fails closed, the rate limiter fails open.
                self.closed_until = time.monotonic() + self.retry_seconds
                log.warning("rate limiter open: Redis failed (%s)", type(failure).__name__)
            for parts, answer in zip(calls, answers, strict=True):
                if isinstance(answer, BaseException):
                    continue  # its requests pass: open
                for part, wait in zip(parts, answer, strict=True):
                    waits[part[0]] = max(waits[part[0]], wait)
                    if wait <= 0:
                        passed[part[0]].append(part)
        finally:
            # Whatever happened, no request is left waiting.
            for (_keys, _rates, future), wait in zip(batch, waits, strict=True):
                if future is not None and not future.done():
                    future.set_result(wait)
        self._give_back(batch, waits, passed)

    def _give_back(self, batch: list[_Check], waits: list[int], passed: list[list[_Part]]) -> None:
        """Queue the return of the tokens a refused request took on its other slots: a refusal drains nothing."""
        for (_keys, _rates, future), wait, parts in zip(batch, waits, passed, strict=True):
            if future is None or wait <= 0:
                continue
            for _index, keys, rates in parts:
                self._queue((keys, rates, None))

    async def aclose(self) -> None:
        """Close the Redis connection."""
        await self.redis.aclose()


class RefusedAddresses:
    """Client addresses whose rate limit ran out on refused tokens, until their Retry-After passes (this process)."""

    MAX = 100_000

    def __init__(self) -> None:
        self.until: OrderedDict[str, float] = OrderedDict()

    def wait(self, ip: str) -> int:
        """Seconds this address must still wait (0: none)."""
        until = self.until.get(ip)
        if until is None:
            return 0
        left = until - time.monotonic()
        if left <= 0:
            del self.until[ip]
            return 0
        return max(1, math.ceil(left))

    def block(self, ip: str, seconds: int) -> None:
        """Remember that `ip` was refused for `seconds`."""
        self.until.pop(ip, None)
        self.until[ip] = time.monotonic() + seconds
        if len(self.until) > self.MAX:  # bounded: the address blocked longest ago is forgotten first
            self.until.popitem(last=False)

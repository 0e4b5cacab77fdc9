"""Per-user and per-IP token buckets in Redis, per class of route (shopping, purchase, admin); fails open.

The checks made in one event-loop iteration go to Redis as one script call (gateway/lua/token_buckets.lua):
under a crowd a gateway process decides several requests per round trip, and Redis runs the script once
for all of them instead of once per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from enum import StrEnum
from pathlib import Path

from gateway.config import GatewaySettings
from services.common.resources import open_script_pipe
from services.common.script_pipe import ScriptPipeError, ScriptReplyError

log = logging.getLogger("gateway.ratelimit")

SCRIPT = (Path(__file__).parent / "lua" / "token_buckets.lua").read_text()

# One request's part of a batch: its bucket keys, its script arguments, and where its answer goes.
_Check = tuple[list[str], list[str], "asyncio.Future[int]"]


def _bucket(rate: float, burst: int) -> tuple[str, str]:
    """A bucket's script arguments: whole microseconds between two tokens (rounded to nearest), and the burst."""
    return str(int(1_000_000 / rate + 0.5)), str(burst)


class LimitClass(StrEnum):
    """Which buckets a request draws from; the value is the buckets' key prefix."""

    SHOPPING = "g"
    PURCHASE = "p"
    # Admin routes called by an admin: ops scripts, limited per admin identity at their own rate.
    ADMIN = "a"


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
        # Rates as the script takes them, per request: how many buckets, then (interval, burst) each, the
        # interval being the whole microseconds between two tokens.
        user, ip = _bucket(settings.user_rate, settings.user_burst), _bucket(settings.ip_rate, settings.ip_burst)
        p_user = _bucket(settings.purchase_user_rate, settings.purchase_user_burst)
        p_ip = _bucket(settings.purchase_ip_rate, settings.purchase_ip_burst)
        admin = _bucket(settings.admin_rate, settings.admin_burst)
        # Keyed by (class, a user known). An admin request always has its user: the admin role was checked.
        self.args = {
            (LimitClass.SHOPPING, True): ["2", *user, *ip],
            (LimitClass.SHOPPING, False): ["1", *ip],
            (LimitClass.PURCHASE, True): ["2", *p_user, *p_ip],
            (LimitClass.PURCHASE, False): ["1", *p_ip],
            (LimitClass.ADMIN, True): ["1", *admin],
            (LimitClass.ADMIN, False): ["1", *ip],
        }
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
            keys = [f"rl:{limits}:ip:{ip}"]
        elif limits is LimitClass.ADMIN:
            keys = [f"rl:a:u:{user_id}"]
        else:
            keys = [f"rl:{limits}:u:{user_id}", f"rl:{limits}:ip:{ip}"]
        loop = self.loop
        if loop is None:
            # Kept: on Python 3.11 every lookup of the running loop is a getpid() system call.
            loop = self.loop = asyncio.get_running_loop()
        answer: asyncio.Future[int] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append((keys, self.args[limits, user_id is not None], answer))
        wait_ms = await answer
        if wait_ms <= 0:
            return 0
        return max(1, math.ceil(wait_ms / 1000))

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        assert self.loop is not None
        task = self.loop.create_task(self._decide(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _decide(self, batch: list[_Check]) -> None:
        keys: list[str] = []
        args = [str(len(batch))]
        for check_keys, check_args, _answer in batch:
            keys += check_keys
            args += check_args
        waits: list[int] = []
        try:
            waits = [int(w) for w in await self.redis.evalsha(keys, args)]
        except (ScriptPipeError, ScriptReplyError) as exc:
            # DESIGN: the stock decision fails closed, the rate limiter fails open.
            self.closed_until = time.monotonic() + self.retry_seconds
            log.warning("rate limiter open: Redis failed (%s)", type(exc).__name__)
        finally:
            # Whatever happened (an answer of the wrong shape included), no request is left waiting.
            if len(waits) != len(batch):
                waits = [0] * len(batch)
            for (_keys, _args, answer), wait in zip(batch, waits, strict=True):
                if not answer.done():
                    answer.set_result(wait)

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

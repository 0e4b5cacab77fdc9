"""Per-user and per-IP token buckets in Redis, one Lua call per request; the limiter fails open."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from gateway.config import GatewaySettings
from gateway.limiter_redis import LimiterRedis, LimiterRedisError

log = logging.getLogger("gateway.ratelimit")

SCRIPT = (Path(__file__).parent / "lua" / "token_buckets.lua").read_text()


class RateLimiter:
    """Decides whether a request may pass; returns the seconds to wait when it may not."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.redis = LimiterRedis(
            settings.redis_url,
            SCRIPT,
            call_timeout=settings.ratelimit_timeout,
            connect_timeout=settings.ratelimit_timeout,
        )
        self.enabled = settings.ratelimit_enabled
        self.retry_seconds = settings.ratelimit_retry_seconds
        self.closed_until = 0.0  # while Redis is failing, skip it instead of paying a timeout per request
        # Rates as the script takes them: tokens per second is milli-tokens per millisecond.
        self.general = (
            (str(settings.user_rate), str(settings.user_burst)),
            (str(settings.ip_rate), str(settings.ip_burst)),
        )
        self.purchase = (
            (str(settings.purchase_user_rate), str(settings.purchase_user_burst)),
            (str(settings.purchase_ip_rate), str(settings.purchase_ip_burst)),
        )

    async def check(self, user_id: str | None, ip: str, purchase: bool) -> int:
        """0 when the request may pass, else the Retry-After seconds; fails open when Redis does not answer."""
        if not self.enabled:
            return 0
        now = time.monotonic()
        if now < self.closed_until:
            return 0
        (user_rate, user_burst), (ip_rate, ip_burst) = self.purchase if purchase else self.general
        kind = "p" if purchase else "g"
        if user_id is not None:
            keys = [f"rl:{kind}:u:{user_id}", f"rl:{kind}:ip:{ip}"]
            args = [user_rate, user_burst, ip_rate, ip_burst]
        else:
            keys = [f"rl:{kind}:ip:{ip}"]
            args = [ip_rate, ip_burst]
        try:
            wait_ms = int(await self.redis.evalsha(keys, args))
        except LimiterRedisError as exc:
            # DESIGN: the stock decision fails closed, the rate limiter fails open.
            self.closed_until = now + self.retry_seconds
            log.warning("rate limiter open: Redis failed (%s)", type(exc).__name__)
            return 0
        if wait_ms <= 0:
            return 0
        return max(1, math.ceil(wait_ms / 1000))

    async def aclose(self) -> None:
        """Close the Redis connection."""
        await self.redis.aclose()

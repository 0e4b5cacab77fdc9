"""What the gateway knows of particular upstream routes: the purchase, long-polls, internal endpoints."""

from __future__ import annotations

import math
from urllib.parse import parse_qsl

# GET routes that hold the request open for up to `?wait=` seconds, per service, by path prefix.
LONG_POLLS = {"order": ("/orders/by-reservation/",)}


def is_purchase(method: str, rest: str) -> bool:
    """POST /sales/{id}/purchase: the route bots hammer, with its own tighter buckets and timeout."""
    return method == "POST" and rest.startswith("/sales/") and rest.endswith("/purchase") and rest.count("/") == 3


def is_internal_path(rest: str) -> bool:
    """A service's own health and metrics endpoints are for the gateway and the monitoring, not the internet."""
    first = rest.lstrip("/").split("/", 1)[0].lower()
    return first in ("metrics", "healthz")


def long_poll_wait(service: str, method: str, rest: str, query: bytes, most: float) -> float:
    """The seconds a long-poll asks to wait (at most `most`, the longest the API allows); 0 for other requests.

    A `wait` the service will refuse (not a number, negative) counts as no wait: the answer is quick.
    """
    prefixes = LONG_POLLS.get(service)
    if prefixes is None or method != "GET" or not query or not rest.startswith(prefixes):
        return 0.0
    for name, value in parse_qsl(query.decode("latin-1")):
        if name == "wait":
            try:
                wait = float(value)
            except ValueError:
                return 0.0
            return min(wait, most) if math.isfinite(wait) and wait > 0 else 0.0
    return 0.0

"""What the purchase script (services/flashsale/lua/purchase.lua) and its read-only replay look-up
(replay.lua) answer: the first element of their reply, then the details listed with each member."""

from __future__ import annotations

import enum


class PurchaseDecision(enum.StrEnum):
    """The first element of a purchase script reply (wire values: the Lua scripts return these strings)."""

    OK = "OK"  # reservation id, remaining, crossed threshold 0|1, sold out 0|1, paused 0|1
    REPLAY = "REPLAY"  # the key's first answer: reservation id, quantity
    KEY_REUSED = "KEY_REUSED"  # the key was used with another request body
    NOT_FOUND = "NOT_FOUND"  # no sale configuration or stock in Redis
    NOT_LIVE = "NOT_LIVE"  # the sale's state as Redis holds it
    SOLD_OUT = "SOLD_OUT"  # 0
    LIMIT = "LIMIT"  # units the buyer holds, the per-user limit
    INSUFFICIENT = "INSUFFICIENT"  # remaining units, fewer than asked for
    NONE = "NONE"  # replay.lua only: no answer stored under the key

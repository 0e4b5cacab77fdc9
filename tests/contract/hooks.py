"""schemathesis hooks of the contract runs (loaded by the CLI through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

from typing import Any

import schemathesis

# `wait` long-polls up to 20 s for an order to appear, and generated reservation ids never get one: every such
# call would take its whole wait. The answer's contract is the same at any wait, so the runs ask without one.
LONG_POLL = "wait"


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Send a valid long-poll `wait` as 0 seconds."""
    query = case.query
    if not isinstance(query, dict):
        return
    value = query.get(LONG_POLL)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return
    try:
        seconds = float(value)  # a query value may come as its text
    except ValueError:
        return
    if 0 < seconds <= 20:
        query[LONG_POLL] = 0

"""Signing of outgoing webhooks, one scheme for every service: HMAC-SHA256 of the exact body bytes."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "x-flashsale-signature"
# The local stack's key; a service refuses it outside dev mode once webhooks are configured.
DEV_SIGNING_KEY = "dev-only-webhook-signing-key"


def sign(body: bytes, key: str | bytes) -> dict[str, str]:
    """Headers for a JSON webhook POST of `body`: content type and `sha256=<hex hmac>` signature."""
    secret = key.encode() if isinstance(key, str) else key
    signature = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", SIGNATURE_HEADER: f"sha256={signature}"}

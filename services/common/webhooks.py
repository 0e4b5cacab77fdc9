"""Signing of outgoing webhooks, one scheme for every service: HMAC-SHA256 of the exact body bytes."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import Field, model_validator

from services.common.config import BaseServiceSettings

SIGNATURE_HEADER = "x-flashsale-signature"
# The local stack's key; a service refuses it outside dev mode once webhooks are configured.
DEV_SIGNING_KEY = "dev-only-webhook-signing-key"


def sign(body: bytes, key: str | bytes) -> dict[str, str]:
    """Headers for a JSON webhook POST of `body`: content type and `sha256=<hex hmac>` signature."""
    secret = key.encode() if isinstance(key, str) else key
    signature = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", SIGNATURE_HEADER: f"sha256={signature}"}


class WebhookSettings(BaseServiceSettings):
    """Alert webhooks of a service (<PREFIX>ALERT_WEBHOOKS, <PREFIX>WEBHOOK_SIGNING_KEY), for its settings to extend."""

    alert_webhooks: str = Field("", description="Comma-separated URLs that receive the service's alerts")
    webhook_signing_key: str = DEV_SIGNING_KEY

    @property
    def webhook_urls(self) -> list[str]:
        """Configured alert webhook URLs."""
        return [u.strip() for u in self.alert_webhooks.split(",") if u.strip()]

    @model_validator(mode="after")
    def _refuse_default_webhook_key(self) -> WebhookSettings:
        # Receivers trust the signature; a well-known key would let anyone forge an alert.
        if not self.is_dev and self.webhook_urls and self.webhook_signing_key == DEV_SIGNING_KEY:
            prefix = self.model_config.get("env_prefix", "")
            raise ValueError(f"{prefix}WEBHOOK_SIGNING_KEY must be set outside dev mode")
        return self

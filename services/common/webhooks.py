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
        return url_list(self.alert_webhooks)

    @model_validator(mode="after")
    def _refuse_default_webhook_key(self) -> WebhookSettings:
        refuse_default_key(self, self.webhook_urls, self.webhook_signing_key)
        return self


def url_list(setting: str) -> list[str]:
    """The URLs of a comma-separated setting."""
    return [u.strip() for u in setting.split(",") if u.strip()]


def refuse_default_key(settings: BaseServiceSettings, urls: list[str], key: str) -> None:
    """Raise outside dev mode when webhooks are configured with the well-known development key: receivers
    trust the signature, and that key would let anyone forge one."""
    if not settings.is_dev and urls and key == DEV_SIGNING_KEY:
        prefix = settings.model_config.get("env_prefix", "")
        raise ValueError(f"{prefix}WEBHOOK_SIGNING_KEY must be set outside dev mode")

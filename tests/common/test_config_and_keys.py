"""Secrets refuse defaults outside dev mode; one purchase touches one Redis Cluster slot."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.crc import key_slot

from services.flashsale import store
from services.flashsale.config import FlashSaleSettings
from services.order.config import OrderSettings


def test_default_jwt_secret_is_refused_outside_dev_mode() -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        FlashSaleSettings(env="production")
    assert FlashSaleSettings(env="production", jwt_secret="a-real-secret-from-the-vault").env == "production"


def test_default_webhook_key_is_refused_outside_dev_mode_when_webhooks_are_set() -> None:
    with pytest.raises(ValidationError, match="WEBHOOK_SIGNING_KEY"):
        FlashSaleSettings(env="production", jwt_secret="s3cret-value", alert_webhooks="https://ops.example/hook")
    with pytest.raises(ValidationError, match="ORDER_WEBHOOK_SIGNING_KEY"):
        OrderSettings(env="production", jwt_secret="s3cret-value", reminder_webhooks="https://crm.example/remind")
    signed = OrderSettings(
        env="production",
        jwt_secret="s3cret-value",
        reminder_webhooks="https://crm.example/remind",
        webhook_signing_key="k",
    )
    assert signed.reminder_webhook_urls == ["https://crm.example/remind"]


def test_identity_provider_keys_come_from_one_source_and_over_https_outside_dev_mode() -> None:
    with pytest.raises(ValidationError, match="not both"):
        FlashSaleSettings(env="test", jwt_jwks_url="http://127.0.0.1:1/jwks", jwt_jwks_file="/tmp/jwks.json")
    production = {"env": "production", "jwt_secret": "a-real-secret-from-the-vault"}
    with pytest.raises(ValidationError, match="https://"):
        FlashSaleSettings(**production, jwt_jwks_url="http://idp.internal/certs")
    https = FlashSaleSettings(
        **production, jwt_jwks_url="https://idp.example/realms/shop/protocol/openid-connect/certs"
    )
    assert https.jwt_jwks_url.startswith("https://")


@pytest.mark.parametrize("sale_id", [1, 42, 987654321])
def test_every_key_of_one_sale_shares_one_cluster_slot(sale_id: int) -> None:
    keys = [
        store.sale_key(sale_id),
        store.bought_key(sale_id),
        store.reservations_key(sale_id),
        store.idempotency_key(sale_id, "user-1", "some-key"),
        store.events_stream(sale_id),
        store.alerts_stream(sale_id),
    ]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    # ...and different sales spread over different slots.
    assert key_slot(store.sale_key(sale_id).encode()) != key_slot(store.sale_key(sale_id + 1).encode())

"""Gateway settings, read from GATEWAY_* (and the shared REDIS_URL / JWT_*) environment variables."""

from __future__ import annotations

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.config import BaseServiceSettings

SERVICES = ("inventory", "flashsale", "coupon", "order")


def split_urls(value: str) -> list[str]:
    """Comma-separated base URLs as a list, without blanks or trailing slashes."""
    return [u.strip().rstrip("/") for u in value.split(",") if u.strip()]


class GatewaySettings(BaseServiceSettings):
    """Everything the gateway reads from its environment; defaults run the local stack."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", populate_by_name=True)

    service_name: str = "gateway"

    # Upstream pools: comma-separated base URLs per service; the backup pool serves only when every primary is out.
    inventory_urls: str = "http://127.0.0.1:8101,http://127.0.0.1:8111"
    flashsale_urls: str = "http://127.0.0.1:8102,http://127.0.0.1:8112"
    coupon_urls: str = "http://127.0.0.1:8103,http://127.0.0.1:8113"
    order_urls: str = "http://127.0.0.1:8104,http://127.0.0.1:8114"
    inventory_backup_urls: str = ""
    flashsale_backup_urls: str = ""
    coupon_backup_urls: str = ""
    order_backup_urls: str = ""

    # Per-route timeouts (seconds, the whole upstream exchange); the purchase route has its own.
    inventory_timeout: float = 5.0
    flashsale_timeout: float = 3.0
    coupon_timeout: float = 5.0
    order_timeout: float = 10.0
    purchase_timeout: float = 2.0
    # A long-poll (GET /api/order/orders/by-reservation/{id}?wait=N) gets the asked wait, at most the
    # longest the API allows, plus this margin; one that timed out is not sent to another replica.
    long_poll_max_seconds: float = 20.0
    long_poll_margin_seconds: float = 5.0
    connect_timeout: float = 0.5
    # A request body must be in within this long (a client trickling it would otherwise hold a pool slot).
    body_timeout_seconds: float = 10.0

    # Pooled keep-alive connections kept idle per replica.
    max_idle_per_replica: int = 256

    # Active health checks on GET /healthz/ready of every replica.
    health_interval: float = 1.0
    health_timeout: float = 1.0
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1

    # Passive ejection: consecutive connection failures or 5xx; the period doubles on repeat ejection.
    eject_consecutive_failures: int = 3
    eject_base_seconds: float = 2.0
    eject_max_seconds: float = 60.0

    # Circuit breaker per replica: opens on a failure ratio over a window of recent calls; half-open probes.
    breaker_window: int = 20
    breaker_min_calls: int = 10
    breaker_failure_ratio: float = 0.5
    breaker_open_seconds: float = 5.0
    breaker_half_open_probes: int = 1

    # Load shedding: requests in flight per pool past which the gateway answers 503 at once.
    max_in_flight_per_pool: int = 512
    shed_retry_after_seconds: int = 1

    # Token buckets in Redis (rate per second, burst); purchase routes get their own tighter buckets.
    ratelimit_enabled: bool = True
    user_rate: float = 20.0
    user_burst: int = 40
    ip_rate: float = 100.0
    ip_burst: int = 200
    purchase_user_rate: float = 2.0
    purchase_user_burst: int = 5
    purchase_ip_rate: float = 50.0
    purchase_ip_burst: int = 100
    # Admin routes (/api/<service>/admin/...) called by an admin: one bucket per admin identity, so an ops
    # script is neither limited like a shopper nor unlimited.
    admin_rate: float = 200.0
    admin_burst: int = 400
    ratelimit_timeout: float = 0.25
    # After a Redis failure the limiter stays open (allows) this long before trying Redis again.
    ratelimit_retry_seconds: float = 1.0
    # How many X-Forwarded-For hops to trust for the client IP (0: the TCP peer is the client).
    trusted_proxy_hops: int = 0

    # Each worker publishes its view of the pools to Redis this often, for GET /admin/upstreams.
    view_interval_seconds: float = Field(2.0, gt=0)

    # The shared JWT_JWKS_FILE; GATEWAY_JWKS_FILE, its older name, still works for the gateway.
    jwt_jwks_file: str = Field("", validation_alias=AliasChoices("JWT_JWKS_FILE", "GATEWAY_JWKS_FILE"))

    # POST /api/auth/token for local demos and load tests; refused outside APP_ENV=dev|test.
    dev_tokens: bool = False
    dev_token_ttl_seconds: int = 3600

    def pool_urls(self, service: str) -> list[str]:
        """Primary replica base URLs of one service."""
        return split_urls(str(getattr(self, f"{service}_urls")))

    def backup_urls(self, service: str) -> list[str]:
        """Backup replica base URLs of one service."""
        return split_urls(str(getattr(self, f"{service}_backup_urls")))

    def timeout_for(self, service: str) -> float:
        """The upstream timeout of one service's routes."""
        return float(getattr(self, f"{service}_timeout"))

    @model_validator(mode="after")
    def _check(self) -> GatewaySettings:
        for name in ("user", "ip", "purchase_user", "purchase_ip", "admin"):
            if getattr(self, f"{name}_rate") <= 0 or getattr(self, f"{name}_burst") < 1:
                raise ValueError(f"GATEWAY_{name.upper()}_RATE must be > 0 and GATEWAY_{name.upper()}_BURST >= 1")
        if self.dev_tokens and not self.is_dev:
            raise ValueError("GATEWAY_DEV_TOKENS=true is only allowed with APP_ENV=dev|test")
        for service in SERVICES:
            if not self.pool_urls(service):
                raise ValueError(f"GATEWAY_{service.upper()}_URLS must list at least one replica")
        return self

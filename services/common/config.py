"""Settings base shared by every service; values come only from the environment."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789abcdef"


class BaseServiceSettings(BaseSettings):
    """Settings every service has; a service subclasses it with its own env prefix."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    service_name: str = "service"
    env: str = Field("dev", validation_alias=AliasChoices("APP_ENV", "ENV"))
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    # Whether REDIS_URL names a node of a Redis Cluster: yes, no, or auto (ask the node once at start).
    redis_cluster: Literal["auto", "yes", "no"] = Field("auto", validation_alias="REDIS_CLUSTER")
    redis_max_connections: int = Field(256, validation_alias="REDIS_MAX_CONNECTIONS")
    # Pool connections opened at start (see resources.warm_redis); none given: all of them.
    redis_warm_connections: int | None = Field(None, ge=0, validation_alias="REDIS_WARM_CONNECTIONS")
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    db_pool_size: int = 10
    # How long a request waits for a pooled database connection before it is answered 503.
    db_pool_timeout_seconds: float = Field(5.0, gt=0, validation_alias="DB_POOL_TIMEOUT_SECONDS")
    jwt_secret: str = Field(DEV_JWT_SECRET, validation_alias="JWT_SECRET")
    jwt_public_key: str = Field("", validation_alias="JWT_PUBLIC_KEY")
    jwt_algorithm: str = Field("HS256", validation_alias="JWT_ALGORITHM")
    # Tokens from an identity provider: its issuer and audience (checked when set; the audience may list
    # several, comma-separated), where its roles are (comma-separated claim paths), and its keys (JWKS).
    jwt_issuer: str = Field("", validation_alias="JWT_ISSUER")
    jwt_audience: str = Field("", validation_alias="JWT_AUDIENCE")
    jwt_roles_claim: str = Field("roles", min_length=1, validation_alias="JWT_ROLES_CLAIM")
    jwt_jwks_url: str = Field("", validation_alias="JWT_JWKS_URL")
    jwt_jwks_file: str = Field("", validation_alias="JWT_JWKS_FILE")
    jwt_jwks_min_refresh_seconds: float = Field(10.0, ge=0, validation_alias="JWT_JWKS_MIN_REFRESH_SECONDS")
    jwt_jwks_max_age_seconds: float = Field(300.0, gt=0, validation_alias="JWT_JWKS_MAX_AGE_SECONDS")
    jwt_jwks_timeout_seconds: float = Field(2.0, gt=0, validation_alias="JWT_JWKS_TIMEOUT_SECONDS")
    # Clock skew allowed on exp, nbf and iat between this host and the token's issuer.
    jwt_leeway_seconds: float = Field(0.0, ge=0, le=300, validation_alias="JWT_LEEWAY_SECONDS")
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")
    access_log: bool = Field(False, validation_alias="ACCESS_LOG")
    max_body_bytes: int = Field(65536, validation_alias="MAX_BODY_BYTES")
    replica_id: str = Field("", validation_alias="REPLICA_ID")

    @property
    def consumer_name(self) -> str:
        """This replica's name in stream consumer groups: REPLICA_ID, else host and process id."""
        return self.replica_id or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def is_dev(self) -> bool:
        """True when running the local development stack or tests."""
        return self.env in {"dev", "test"}

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> BaseServiceSettings:
        # Outside dev mode a forgotten secret must stop the service, not weaken it.
        if not self.is_dev and self.jwt_algorithm.startswith("HS") and self.jwt_secret == DEV_JWT_SECRET:
            raise ValueError("JWT_SECRET must be set outside dev mode (APP_ENV=dev|test)")
        if self.jwt_jwks_url and self.jwt_jwks_file:
            raise ValueError("Set JWT_JWKS_URL or JWT_JWKS_FILE, not both")
        # Keys fetched over plain HTTP could be swapped on the way: anyone could then sign tokens.
        if self.jwt_jwks_url and not self.jwt_jwks_url.startswith(
            ("https://", "http://") if self.is_dev else "https://"
        ):
            raise ValueError("JWT_JWKS_URL must be an https:// URL (http:// only with APP_ENV=dev|test)")
        return self

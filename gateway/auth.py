"""Auth at the edge: verify the bearer token once, set X-User-Id / X-User-Roles, require admin for /admin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt

from gateway.config import GatewaySettings
from services.common.auth import TokenVerifier, Unauthenticated


class EdgeTokenVerifier(TokenVerifier):
    """The shared verifier (HS256 key or RS256 public key), plus RS256 keys from a JWKS file picked by `kid`."""

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__(settings)
        self.jwks: jwt.PyJWKSet | None = None
        if settings.jwks_file:
            self.jwks = jwt.PyJWKSet.from_json(Path(settings.jwks_file).read_text())

    def key_for(self, token: str) -> Any:
        """The JWKS key named by the token's `kid`, else the configured key."""
        if self.jwks is None:
            return self.key
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            return self.jwks[str(kid)].key
        except (jwt.PyJWTError, KeyError):
            raise Unauthenticated("Invalid token") from None


def bearer_token(header: bytes) -> str:
    """The token of an `Authorization: Bearer <token>` header value (raises Unauthenticated)."""
    scheme, _, token = header.decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Authorization must be 'Bearer <token>'")
    return token


def is_admin_path(rest: str) -> bool:
    """Upstream admin paths (`/admin/...` after the service prefix) need the admin role.

    Judged on the decoded path with empty segments skipped and any case, so `//admin`, `/%2Fadmin` or
    `/ADMIN` cannot slip past the check to an upstream that might route them.
    """
    for segment in rest.split("/"):
        if segment:
            return segment.lower() == "admin"
    return False


def has_dot_segment(rest: str) -> bool:
    """True for paths with `.` or `..` segments, which the gateway refuses rather than resolve."""
    return "/." in rest and any(s in (".", "..") for s in rest.split("/"))

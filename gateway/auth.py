"""Auth at the edge: verify the bearer token once, set X-User-Id / X-User-Roles, require admin for /admin."""

from __future__ import annotations

from gateway.config import GatewaySettings
from services.common.auth import TokenVerifier, Unauthenticated


class EdgeTokenVerifier(TokenVerifier):
    """The services' verifier with the gateway's settings: one set of rules at the edge and behind it
    (keys, `kid` lookup in a JWKS, `iss`/`aud`, `exp`/`nbf`, role claims)."""

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__(settings)


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

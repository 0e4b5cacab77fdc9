"""JWT verification with the roles `customer` and `admin`."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request

from services.common.config import BaseServiceSettings
from services.common.errors import ProblemError

ROLE_CUSTOMER = "customer"
ROLE_ADMIN = "admin"
MAX_SUBJECT_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user id and the roles the token grants."""

    user_id: str
    roles: frozenset[str]
    expires_at: float

    @property
    def is_admin(self) -> bool:
        """True when the token carries the admin role."""
        return ROLE_ADMIN in self.roles


class Unauthenticated(ProblemError):
    status = 401
    code = "UNAUTHENTICATED"
    title = "Authentication required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ProblemError):
    status = 403
    code = "FORBIDDEN"
    title = "Forbidden"


class TokenVerifier:
    """Verifies bearer tokens; a small cache spares the signature check for tokens seen recently."""

    def __init__(self, settings: BaseServiceSettings, cache_size: int = 50_000) -> None:
        self.algorithm = settings.jwt_algorithm
        self.key = settings.jwt_public_key if self.algorithm.startswith(("RS", "ES")) else settings.jwt_secret
        self.cache: OrderedDict[str, Principal] = OrderedDict()
        self.cache_size = cache_size

    def key_for(self, token: str) -> Any:
        """The key that checks this token's signature (a subclass may pick one from a key set)."""
        return self.key

    def cached(self, token: str) -> Principal | None:
        """The principal of `token` when it was verified here recently and has not expired (no signature check)."""
        cached = self.cache.get(token)
        return cached if cached is not None and cached.expires_at > time.time() else None

    def verify(self, token: str) -> Principal:
        """Return the principal for a valid token or raise Unauthenticated."""
        now = time.time()
        cached = self.cache.get(token)
        if cached is not None:
            if cached.expires_at > now:
                return cached
            del self.cache[token]
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.key_for(token), algorithms=[self.algorithm], options={"require": ["sub", "exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("Token expired") from None
        except jwt.PyJWTError:
            raise Unauthenticated("Invalid token") from None
        subject = str(claims["sub"])
        if not subject or len(subject) > MAX_SUBJECT_LENGTH:
            raise Unauthenticated(f"Token subject must be 1-{MAX_SUBJECT_LENGTH} characters")
        roles = claims.get("roles") or []
        if isinstance(roles, str):
            roles = roles.split()
        principal = Principal(subject, frozenset(str(r) for r in roles), float(claims["exp"]))
        self.cache[token] = principal
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return principal


def issue_token(settings: BaseServiceSettings, user_id: str, roles: list[str], ttl_seconds: int = 3600) -> str:
    """Mint an HS256 token; for the local stack, demos and tests only."""
    now = int(time.time())
    claims = {"sub": user_id, "roles": roles, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


class ServiceToken:
    """The bearer token one service shows another's admin API: SERVICE_TOKEN when set (e.g. RS256
    deployments, where services cannot sign), else an hour-long HS256 token minted and renewed here."""

    def __init__(self, settings: BaseServiceSettings, caller: str, configured: str = "") -> None:
        self.settings = settings
        self.caller = caller
        self.configured = configured
        self._token = ""
        self._renew_at = 0.0

    def headers(self) -> dict[str, str]:
        """The Authorization header to send now."""
        if self.configured:
            return {"Authorization": f"Bearer {self.configured}"}
        now = time.time()
        if now >= self._renew_at:
            self._token = issue_token(self.settings, self.caller, [ROLE_ADMIN], ttl_seconds=3600)
            self._renew_at = now + 3000
        return {"Authorization": f"Bearer {self._token}"}


async def principal(request: Request) -> Principal:
    """Who is calling, from the bearer token (raises Unauthenticated)."""
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a costly hop per request.
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated("Missing bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Authorization must be 'Bearer <token>'")
    verifier: TokenVerifier = request.app.state.token_verifier
    return verifier.verify(token.strip())


async def _admin(principal: Annotated[Principal, Depends(principal)]) -> Principal:
    if not principal.is_admin:
        raise Forbidden("The admin role is required")
    return principal


CurrentUser = Annotated[Principal, Depends(principal)]
AdminUser = Annotated[Principal, Depends(_admin)]

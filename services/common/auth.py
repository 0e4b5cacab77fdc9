"""JWT verification with the roles `customer` and `admin`, for tokens of our own or of an identity provider."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import jwt
from fastapi import Depends, Request

from services.common.config import BaseServiceSettings
from services.common.errors import ProblemError
from services.common.jwks import SigningKeys

if TYPE_CHECKING:
    from jwt.types import Options

ROLE_CUSTOMER = "customer"
ROLE_ADMIN = "admin"
MAX_SUBJECT_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user id and the roles the token grants."""

    user_id: str
    roles: frozenset[str]
    expires_at: float
    not_before: float = float("-inf")

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


class UnknownSigningKey(Unauthenticated):
    """The token names a `kid` the key set does not hold (yet: a refresh may bring it)."""

    def __init__(self) -> None:
        super().__init__("Token signed by an unknown key")


# PyJWT's refusals as the caller reads them; anything else is "Invalid token". Never the token itself.
_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "Token expired"),
    (jwt.ImmatureSignatureError, "Token not yet valid"),
    (jwt.InvalidIssuerError, "Token issuer not accepted"),
    (jwt.InvalidAudienceError, "Token audience not accepted"),
)


class TokenVerifier:
    """Verifies bearer tokens by one set of rules at the gateway and in every service: the signature (the
    configured key, or the JWKS key named by `kid`), `exp` and `nbf`, `iss` and `aud` when configured, and
    the roles from the configured claim paths. A cache spares the signature check for tokens seen recently,
    and a cached token is still refused once outside its `nbf`..`exp` window."""

    def __init__(self, settings: BaseServiceSettings, cache_size: int = 50_000) -> None:
        self.algorithm = settings.jwt_algorithm
        self.key = settings.jwt_public_key if self.algorithm.startswith(("RS", "ES", "PS")) else settings.jwt_secret
        self.issuer = settings.jwt_issuer or None
        self.audience = [a.strip() for a in settings.jwt_audience.split(",") if a.strip()] or None
        self.roles_claims = tuple(p.strip() for p in settings.jwt_roles_claim.split(",") if p.strip())
        self.leeway = settings.jwt_leeway_seconds
        required = ["sub", "exp"] + ["iss"] * bool(self.issuer) + ["aud"] * bool(self.audience)
        self.options: Options = {"require": required, "verify_aud": self.audience is not None}
        self.signing_keys: SigningKeys | None = None
        if settings.jwt_jwks_url or settings.jwt_jwks_file:
            self.signing_keys = SigningKeys(
                url=settings.jwt_jwks_url,
                file=settings.jwt_jwks_file,
                min_refresh_seconds=settings.jwt_jwks_min_refresh_seconds,
                max_age_seconds=settings.jwt_jwks_max_age_seconds,
                timeout_seconds=settings.jwt_jwks_timeout_seconds,
            )
        self.cache: OrderedDict[str, Principal] = OrderedDict()
        self.cache_size = cache_size
        self.withdrawals_seen = 0

    def key_for(self, token: str) -> tuple[Any, list[str]]:
        """The key that checks this token's signature and the algorithms it may use: the JWKS key its `kid`
        names (raises UnknownSigningKey), or the configured key for a token without `kid`."""
        if self.signing_keys is None:
            return self.key, [self.algorithm]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise Unauthenticated("Invalid token") from None
        if kid is None:
            return self.key, [self.algorithm]
        jwk = self.signing_keys.get(str(kid))
        if jwk is None:
            raise UnknownSigningKey()
        return jwk.key, [jwk.algorithm_name]

    def cached(self, token: str) -> Principal | None:
        """The principal of `token` when it was verified here recently and is inside its validity window."""
        keys = self.signing_keys
        if keys is not None and keys.withdrawals != self.withdrawals_seen:
            # The IdP withdrew a key: tokens it signed must not live on in the cache.
            self.cache.clear()
            self.withdrawals_seen = keys.withdrawals
        cached = self.cache.get(token)
        if cached is None:
            return None
        now = time.time()
        if cached.not_before - self.leeway <= now < cached.expires_at + self.leeway:
            return cached
        return None

    def verify(self, token: str) -> Principal:
        """The principal of a valid token signed by a key held now (raises Unauthenticated)."""
        cached = self.cached(token)
        if cached is not None:
            return cached
        self.cache.pop(token, None)
        key, algorithms = self.key_for(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=self.options,
            )
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"Token lacks the {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            detail = next((text for kind, text in _REFUSALS if isinstance(exc, kind)), "Invalid token")
            raise Unauthenticated(detail) from None
        principal = self._principal(claims)
        self.cache[token] = principal
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return principal

    async def authenticate(self, token: str) -> Principal:
        """Like `verify`, fetching the key set again when the token names a key not held yet (rate-limited)."""
        keys = self.signing_keys
        if keys is None:
            return self.verify(token)
        keys.refresh_if_stale()
        try:
            return self.verify(token)
        except UnknownSigningKey:
            await keys.refresh(keys.generation)
            return self.verify(token)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_LENGTH:
            raise Unauthenticated(f"Token subject must be 1-{MAX_SUBJECT_LENGTH} characters")
        nbf = claims.get("nbf")
        not_before = float(nbf) if isinstance(nbf, int | float) else float("-inf")
        return Principal(subject, roles_in(claims, self.roles_claims), float(claims["exp"]), not_before)


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The claim at a dotted path (`realm_access.roles`); a claim whose own name has dots (Auth0's namespaced
    `https://example.com/roles`) is found by that name first."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def roles_in(claims: dict[str, Any], paths: tuple[str, ...]) -> frozenset[str]:
    """The roles at any of `paths`: a list of names (`roles`, `groups`) or a space-separated string (`scope`)."""
    roles: set[str] = set()
    for path in paths:
        value = claim_at(claims, path)
        if isinstance(value, str):
            roles.update(value.split())
        elif isinstance(value, list):
            roles.update(v for v in value if isinstance(v, str))
    return frozenset(roles)


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
    return await verifier.authenticate(token.strip())


async def _admin(principal: Annotated[Principal, Depends(principal)]) -> Principal:
    if not principal.is_admin:
        raise Forbidden("The admin role is required")
    return principal


CurrentUser = Annotated[Principal, Depends(principal)]
AdminUser = Annotated[Principal, Depends(_admin)]

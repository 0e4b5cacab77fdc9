"""Tokens from a real identity provider: keys generated here, published by a JWKS endpoint served here on a
real port (counting its hits), verified by the gateway at the edge and by a service (paysim) behind it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI

from services.common.config import DEV_JWT_SECRET
from services.paysim.config import PaySimSettings
from services.paysim.main import create_app as create_paysim
from tests.conftest import free_port
from tests.gateway.conftest import serve, shutdown

ISSUER = "https://idp.flashsale.test/realms/shop"
AUDIENCE = "flashsale-api"


class IdentityProvider:
    """Signs tokens with keys made here and serves the public ones at GET /jwks, counting every fetch."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits = 0
        self.private: dict[str, tuple[Any, str]] = {}
        self.published: list[str] = []
        self.server: Any = None

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    def add_key(self, kid: str, algorithm: str = "RS256", *, publish: bool = True) -> None:
        """Make a key pair (RS256 or ES256); publish its public half unless told not to."""
        if algorithm == "RS256":
            self.private[kid] = (rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm)
        else:
            self.private[kid] = (ec.generate_private_key(ec.SECP256R1()), algorithm)
        if publish:
            self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            key, algorithm = self.private[kid]
            family = jwt.algorithms.RSAAlgorithm if algorithm == "RS256" else jwt.algorithms.ECAlgorithm
            public: dict[str, Any] = family.to_jwk(key.public_key(), as_dict=True)
            keys.append({**public, "kid": kid, "alg": algorithm, "use": "sig"})
        # An encryption key, as IdPs publish beside signing keys: it must not be taken for one.
        return {"keys": [*keys, {"kty": "oct", "kid": "enc-1", "use": "enc", "k": "c2VjcmV0"}]}

    def token(self, kid: str, *, sub: str = "u-idp", lifetime: int = 300, **claims: Any) -> str:
        """A token as the IdP issues it: iss, aud, iat, nbf, exp and Keycloak's realm roles, then `claims`."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": ["account", AUDIENCE],
            "sub": sub,
            "iat": now,
            "nbf": now - 5,
            "exp": now + lifetime,
            "realm_access": {"roles": ["admin", "offline_access"]},
            **claims,
        }
        key, algorithm = self.private[kid]
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm, headers={"kid": kid})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                if (await receive())["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.hits += 1
        body = orjson.dumps(self.jwks())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def idp() -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.add_key("k1")
    provider.server = await serve(provider, provider.port)
    yield provider
    await shutdown(provider.server)


def idp_settings(provider: IdentityProvider, **overrides: Any) -> dict[str, Any]:
    """The settings that plug the IdP in, the same for the gateway and every service."""
    return {
        "jwt_algorithm": "RS256",
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_roles_claim": "realm_access.roles",
        "jwt_jwks_url": provider.jwks_url,
        **overrides,
    }


@pytest.fixture
async def paysim(idp: IdentityProvider) -> AsyncIterator[httpx.AsyncClient]:
    """A paysim provider verifying the IdP's tokens itself, in-process with its lifespan running."""
    app: FastAPI = create_paysim(PaySimSettings(env="test", name="primary", **idp_settings(idp)))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://paysim") as client,
    ):
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_idp_tokens_pass_with_its_issuer_and_audience_at_the_edge_and_in_a_service(
    idp: IdentityProvider, start_gateway: Any, upstreams: Any, paysim: httpx.AsyncClient
) -> None:
    idp.add_key("forger-key", publish=False)
    (order,) = await upstreams("order")
    gw = await start_gateway(order_urls=order.url, **idp_settings(idp))
    later = int(time.time()) + 120
    cases = [
        ("an IdP admin token", idp.token("k1"), 200, None),
        ("a token for this audience only", idp.token("k1", aud=AUDIENCE), 200, None),
        ("another issuer", idp.token("k1", iss="https://evil.test/"), 401, "Token issuer not accepted"),
        ("another audience", idp.token("k1", aud="billing-api"), 401, "Token audience not accepted"),
        ("no audience", idp.token("k1", aud=None), 401, "Token lacks the aud claim"),
        ("not valid before later", idp.token("k1", nbf=later, iat=later), 401, "Token not yet valid"),
        ("expired", idp.token("k1", lifetime=-10), 401, "Token expired"),
        ("a customer", idp.token("k1", realm_access={"roles": ["customer"]}), 403, None),
        ("a published kid, signed by another key", _forged(idp, "k1"), 401, "Invalid token"),
    ]
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for what, token, status, detail in cases:
            before = order.total
            edge = await client.get("/api/order/admin/orders", headers=bearer(token))
            service = await paysim.get("/admin/faults", headers=bearer(token))
            for where, resp in (("gateway", edge), ("paysim", service)):
                assert resp.status_code == status, f"{what} at {where}: {resp.text}"
                if detail is not None:
                    assert resp.json()["code"] == "UNAUTHENTICATED" and resp.json()["detail"] == detail, where
            assert order.total == before + (status == 200), what  # refused at the edge: never forwarded
            if status == 200:
                assert edge.json()["headers"]["x-user-id"] == "u-idp"
                assert "admin" in edge.json()["headers"]["x-user-roles"].split()


def _forged(provider: IdentityProvider, kid: str) -> str:
    """A token naming a published kid but signed by a key the IdP never published."""
    real = provider.private[kid]
    provider.private[kid] = provider.private["forger-key"]
    try:
        return provider.token(kid)
    finally:
        provider.private[kid] = real


@pytest.mark.parametrize(
    ("claim_path", "granting", "not_granting"),
    [
        ("realm_access.roles", {"realm_access": {"roles": ["admin"]}}, {"realm_access": {"roles": ["customer"]}}),
        ("https://flashsale.dev/roles", {"https://flashsale.dev/roles": ["admin"]}, {"roles": ["admin"]}),
        ("groups", {"groups": ["customer", "admin"]}, {"groups": ["customer"]}),
        ("scope", {"scope": "openid profile admin"}, {"scope": "openid profile"}),
        ("scope,realm_access.roles", {"realm_access": {"roles": ["admin"]}}, {"scope": "openid"}),
    ],
)
async def test_roles_are_read_where_the_identity_provider_puts_them(
    start_gateway: Any, upstreams: Any, claim_path: str, granting: dict[str, Any], not_granting: dict[str, Any]
) -> None:
    (order,) = await upstreams("order")
    gw = await start_gateway(order_urls=order.url, jwt_roles_claim=claim_path)
    now = int(time.time())

    def token(claims: dict[str, Any]) -> str:
        return jwt.encode({"sub": "ops-1", "exp": now + 60, **claims}, DEV_JWT_SECRET, algorithm="HS256")

    async with httpx.AsyncClient(base_url=gw.url) as client:
        for path in ("/admin/upstreams", "/api/order/admin/orders"):  # the gateway's own route, and the edge
            assert (await client.get(path, headers=bearer(token(granting)))).status_code == 200, path
            refused = await client.get(path, headers=bearer(token(not_granting)))
            assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN", path


async def test_a_rotated_key_is_fetched_once_and_unknown_kids_do_not_fetch_again(
    idp: IdentityProvider, start_gateway: Any, upstreams: Any
) -> None:
    (order,) = await upstreams("order")
    gw = await start_gateway(order_urls=order.url, **idp_settings(idp, jwt_jwks_min_refresh_seconds=60))
    async with httpx.AsyncClient(base_url=gw.url) as client:

        async def crowd(tokens: list[str]) -> list[int]:
            answers = await asyncio.gather(*(client.get("/api/order/orders", headers=bearer(t)) for t in tokens))
            return [a.status_code for a in answers]

        # First tokens: the keys are loaded once, however many requests arrive together.
        assert await crowd([idp.token("k1", sub=f"u-{n}") for n in range(10)]) == [200] * 10
        assert idp.hits == 1

        # The IdP rotates to a new key (another algorithm too): one refresh brings it in, no restart.
        idp.add_key("k2", "ES256")
        assert await crowd([idp.token("k2", sub=f"v-{n}") for n in range(10)]) == [200] * 10
        assert idp.hits == 2

        # Made-up kids right after: refused without a fetch each (one refresh per 60 s at most).
        for n in range(30):
            idp.add_key(f"made-up-{n}", "ES256", publish=False)
        made_up = await crowd([idp.token(f"made-up-{n}") for n in range(30)])
        assert made_up == [401] * 30
        assert idp.hits == 2
        assert await crowd([idp.token("k1"), idp.token("k2")]) == [200, 200]


async def test_a_cached_token_is_refused_once_it_expires(
    idp: IdentityProvider, start_gateway: Any, upstreams: Any
) -> None:
    (order,) = await upstreams("order")
    gw = await start_gateway(order_urls=order.url, **idp_settings(idp))
    token = idp.token("k1", lifetime=2)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for _ in range(3):  # verified once, then answered from the cache
            assert (await client.get("/api/order/orders", headers=bearer(token))).status_code == 200
        await asyncio.sleep(max(0.0, expires - time.time()) + 0.2)
        late = await client.get("/api/order/orders", headers=bearer(token))
        assert late.status_code == 401 and late.json()["detail"] == "Token expired"

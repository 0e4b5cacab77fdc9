"""The services' token verifier with a JWKS file: keys rotate without a restart, and a withdrawn key stops
being accepted, cached tokens included."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest

from services.common.auth import TokenVerifier, Unauthenticated
from services.common.config import BaseServiceSettings
from tests.conftest import wait_for

SECRETS = {"k1": b"first-secret-0123456789abcdef0123", "k2": b"second-secret-0123456789abcdef012"}


def write_jwks(path: Path, *kids: str) -> None:
    keys = [
        {"kty": "oct", "kid": kid, "alg": "HS256", "k": base64.urlsafe_b64encode(SECRETS[kid]).rstrip(b"=").decode()}
        for kid in kids
    ]
    path.write_text(json.dumps({"keys": keys}))


def token(kid: str, sub: str = "u-1") -> str:
    claims = {"sub": sub, "roles": ["customer"], "exp": int(time.time()) + 60}
    return jwt.encode(claims, SECRETS[kid], algorithm="HS256", headers={"kid": kid})


async def test_a_jwks_file_rotates_without_a_restart_and_a_withdrawn_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, "k1")
    settings = BaseServiceSettings(
        env="test", jwt_jwks_file=str(path), jwt_jwks_min_refresh_seconds=0, jwt_jwks_max_age_seconds=0.2
    )
    verifier = TokenVerifier(settings)
    old = token("k1")
    assert (await verifier.authenticate(old)).user_id == "u-1"
    with pytest.raises(Unauthenticated, match="unknown key"):
        await verifier.authenticate(token("k2"))

    write_jwks(path, "k1", "k2")  # the new key is published beside the old one
    assert (await verifier.authenticate(token("k2", sub="u-2"))).user_id == "u-2"

    write_jwks(path, "k2")  # then the old one is withdrawn: once the set is re-read, its tokens are refused

    async def old_key_refused() -> bool:
        await verifier.authenticate(token("k2", sub=f"u-{time.monotonic_ns()}"))  # a fresh token starts a re-read
        try:
            await verifier.authenticate(old)
        except Unauthenticated:
            return True
        return False

    assert await wait_for(old_key_refused, timeout=5)
    assert verifier.cached(old) is None

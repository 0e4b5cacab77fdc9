"""Token verification at the edge: the shared key, and keys from a JWKS file picked by `kid`."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest

from gateway.auth import EdgeTokenVerifier, bearer_token, is_admin_path
from services.common.auth import Unauthenticated
from tests.gateway.conftest import gateway_settings


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_jwks_file_keys_are_picked_by_kid(tmp_path: Path) -> None:
    # Symmetric JWKs keep the test free of crypto libraries; RS256 keys take the same path (kid -> key).
    keys = {"k1": b"first-secret-0123456789abcdef0123", "k2": b"second-secret-0123456789abcdef012"}
    jwks = {"keys": [{"kty": "oct", "kid": kid, "k": _b64(k), "alg": "HS256"} for kid, k in keys.items()]}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    verifier = EdgeTokenVerifier(gateway_settings(jwt_jwks_file=str(path)))
    claims = {"sub": "u-1", "roles": ["customer"], "exp": int(time.time()) + 60}
    for kid, key in keys.items():
        token = jwt.encode(claims, key, algorithm="HS256", headers={"kid": kid})
        principal = verifier.verify(bearer_token(f"Bearer {token}".encode()))
        assert principal.user_id == "u-1" and principal.roles == {"customer"}
    unknown = jwt.encode(claims, keys["k1"], algorithm="HS256", headers={"kid": "nope"})
    with pytest.raises(Unauthenticated):
        verifier.verify(unknown)
    forged = jwt.encode(claims, keys["k2"], algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(Unauthenticated):
        verifier.verify(forged)


def test_admin_path_check_is_not_fooled_by_spelling() -> None:
    for path in ("/admin", "/admin/sales", "//admin/sales", "/ADMIN/x", "/Admin"):
        assert is_admin_path(path), path
    for path in ("/sales", "/sales/admin", "/administrator", "/"):
        assert not is_admin_path(path), path

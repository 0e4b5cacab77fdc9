"""The gateway's own public endpoint: demo tokens, mounted only when GATEWAY_DEV_TOKENS=true in dev/test."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.config import GatewaySettings
from gateway.schemas import DevTokenOut, DevTokenRequest
from services.common.auth import issue_token
from services.common.errors import ProblemError

router = APIRouter(tags=["dev"])


@router.post("/api/auth/token", response_model=DevTokenOut)
async def dev_token(body: DevTokenRequest, request: Request) -> DevTokenOut:
    """Mint an HS256 token for a local demo or load test (never in production: the route does not exist there)."""
    settings: GatewaySettings = request.app.state.settings
    if settings.jwt_algorithm != "HS256":
        raise ProblemError(
            f"Demo tokens are HS256; the gateway verifies {settings.jwt_algorithm}",
            status=409,
            code="DEV_TOKENS_UNAVAILABLE",
        )
    ttl = body.ttl_seconds or settings.dev_token_ttl_seconds
    roles = sorted(set(body.roles))
    token = issue_token(settings, body.user_id, roles, ttl_seconds=ttl)
    return DevTokenOut(access_token=token, expires_in=ttl, user_id=body.user_id, roles=roles)

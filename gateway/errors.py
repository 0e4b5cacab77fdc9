"""Problem+json answers of the gateway's own proxy path, with stable codes."""

from __future__ import annotations

from http import HTTPStatus

import orjson
from starlette.types import Send

from services.common.errors import PROBLEM_JSON

NOT_FOUND = "NOT_FOUND"
BAD_REQUEST = "BAD_REQUEST"
UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"
RATE_LIMITED = "RATE_LIMITED"
OVERLOADED = "OVERLOADED"
UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
REQUEST_TIMEOUT = "REQUEST_TIMEOUT"

_CONTENT_TYPE = (b"content-type", PROBLEM_JSON.encode())


async def send_problem(
    send: Send,
    status: int,
    code: str,
    detail: str,
    *,
    instance: str,
    request_id: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer with an RFC 9457 problem; cheap on purpose: rejections must cost less than successes."""
    body = orjson.dumps(
        {
            "type": f"https://flashsale.dev/problems/{code.lower().replace('_', '-')}",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "code": code,
            "detail": detail,
            "instance": instance,
        }
    )
    out = [_CONTENT_TYPE, (b"content-length", b"%d" % len(body)), (b"x-request-id", request_id)]
    if headers:
        out.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})

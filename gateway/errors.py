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

# The status counted for a client that went away before its answer (nginx's convention); nothing is sent.
CLIENT_GONE = 499

_CONTENT_TYPE = (b"content-type", PROBLEM_JSON.encode())
_BEARER_CHALLENGE = [(b"www-authenticate", b"Bearer")]


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


class EarlyAnswer(Exception):
    """The gateway's own answer to a request, raised by the proxy stage that decided it instead of forwarding.

    One exception type, caught once by the proxy, which sends the problem and counts the status: the
    stages stay free of answer plumbing, and a refusal costs a raise, not a round of return values.
    A `code` of None is a client that went away (counted as 499): there is nobody to answer.
    """

    def __init__(
        self, status: int, code: str | None, detail: str = "", headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(status, code)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers

    async def send(self, send: Send, *, instance: str, request_id: bytes) -> None:
        """Send the problem (nothing when the client is gone)."""
        if self.code is not None:
            await send_problem(
                send,
                self.status,
                self.code,
                self.detail,
                instance=instance,
                request_id=request_id,
                headers=self.headers,
            )


def rate_limited(wait: int) -> EarlyAnswer:
    """429 with the seconds the caller must wait."""
    return EarlyAnswer(429, RATE_LIMITED, "Too many requests; slow down", [(b"retry-after", b"%d" % wait)])


def unauthenticated(detail: str) -> EarlyAnswer:
    """401 with the Bearer challenge."""
    return EarlyAnswer(401, UNAUTHENTICATED, detail, _BEARER_CHALLENGE)


def too_large(max_body: int) -> EarlyAnswer:
    """413: the body passed the gateway's limit."""
    return EarlyAnswer(413, PAYLOAD_TOO_LARGE, f"Request body exceeds {max_body} bytes")


def unavailable(status: int, why: str, retry_after: list[tuple[bytes, bytes]]) -> EarlyAnswer:
    """503 (no replica to pick) or 502 (none could be reached), both to be retried shortly."""
    return EarlyAnswer(status, UPSTREAM_UNAVAILABLE, f"{why.capitalize()}; retry shortly", retry_after)

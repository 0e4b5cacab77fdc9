"""What a request body must be before any route sees it: JSON (`application/json` or `application/*+json`)
in UTF-8. Every route of every service takes JSON or nothing, so the check is made once, for all of them,
by `ServiceMiddleware`; a route added tomorrow cannot answer a text body or broken UTF-8 differently."""

from __future__ import annotations

from starlette.responses import Response

from services.common.errors import problem_response

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
ACCEPTED = "application/json"


def is_json_media_type(content_type: bytes | None) -> bool:
    """True for `application/json` and `application/<anything>+json`, with any parameters (`charset=utf-8`)."""
    if content_type == b"application/json":  # what nearly every client sends
        return True
    if not content_type:
        return False
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


def is_utf8(body: bytes) -> bool:
    """True when `body` decodes as UTF-8 (RFC 8259: JSON exchanged between systems is UTF-8)."""
    if body.isascii():  # nearly every body, and far cheaper than decoding
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def body_problem(content_type: bytes | None, body: bytes, path: str) -> Response | None:
    """The answer refusing a non-empty body that is not JSON or not UTF-8; None when the body may go on."""
    if not is_json_media_type(content_type):
        given = content_type.decode("latin-1")[:100] if content_type else "no Content-Type"
        return problem_response(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"Send the body as {ACCEPTED} (got {given})",
            instance=path,
            headers={"Accept": ACCEPTED},
        )
    if not is_utf8(body):
        return problem_response(400, "MALFORMED_JSON", "Request body is not valid UTF-8", instance=path)
    return None

"""The OpenAPI document every service serves, one a client generator can trust.

Every error is `application/problem+json` with one `Problem` schema; each operation lists the statuses it can
answer: the ones its route declares with `problems(...)` (from the error classes it raises), plus the ones the
platform adds around every route (validation, body limits, auth, the gateway's rate limits and failover).
Operations that need a token declare the bearer scheme, and a required `Idempotency-Key` is a header parameter.
The `servers` entry is the gateway prefix the service is reached under.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, get_args

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts

from services.common.auth import AdminUser, CurrentUser
from services.common.errors import PROBLEM_JSON, ProblemError
from services.common.idempotency import (
    MAX_KEY_LENGTH,
    IdempotencyKey,
    IdempotencyKeyInFlight,
    IdempotencyKeyRequired,
    IdempotencyKeyReused,
)

PROBLEM_REF = "#/components/schemas/Problem"
BEARER = "bearerAuth"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Printable ASCII, no blank at either end (a server strips those from a header value anyway).
KEY_PATTERN = "^[!-~]([ -~]*[!-~])?$"

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem; `code` is stable and machine-readable, `detail` is for people.",
    "type": "object",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string", "description": "A URI naming the kind of problem"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "code": {"type": "string", "description": "Stable machine-readable code, e.g. SOLD_OUT"},
        "detail": {"type": "string"},
        "instance": {"type": "string", "description": "The path the problem happened on"},
        "errors": {
            "type": "array",
            "description": "For VALIDATION_ERROR and MALFORMED_JSON: each invalid input",
            "items": {
                "type": "object",
                "properties": {"loc": {"type": "array", "items": {"type": "string"}}, "msg": {"type": "string"}},
            },
        },
    },
    # Some problems carry extras (e.g. a limit, the checks of a readiness probe).
    "additionalProperties": True,
}


@dataclass(frozen=True, slots=True)
class Answer:
    """A problem status and code an operation can answer with, and when."""

    status: int
    code: str
    when: str = ""

    @classmethod
    def of(cls, error: type[ProblemError] | Answer) -> Answer:
        """The answer of an error class (its status, code and title)."""
        if isinstance(error, Answer):
            return error
        return cls(error.status, error.code, error.title)


# Answers every operation can give, whatever its route: the request never reached it, or was refused around it.
VALIDATION = Answer(422, "VALIDATION_ERROR", "a parameter or the body does not match this document")
MALFORMED_JSON = Answer(400, "MALFORMED_JSON", "the body is not JSON")
TOO_LARGE = Answer(413, "PAYLOAD_TOO_LARGE", "the body is larger than the limit")
UNSUPPORTED_MEDIA_TYPE = Answer(415, "UNSUPPORTED_MEDIA_TYPE", "the body is not application/json")
BODY_TIMEOUT = Answer(408, "REQUEST_TIMEOUT", "the body did not arrive in time (gateway)")
UNAUTHENTICATED = Answer(401, "UNAUTHENTICATED", "no bearer token, or an invalid or expired one")
FORBIDDEN = Answer(403, "FORBIDDEN", "the token lacks the admin role")
NOT_FOUND = Answer(404, "NOT_FOUND", "no such route (e.g. a path parameter with a `.` or `..` segment)")
DUPLICATE_AUTHORIZATION = Answer(400, "BAD_REQUEST", "more than one Authorization header (gateway)")
RATE_LIMITED = Answer(429, "RATE_LIMITED", "too many requests from this user or address (gateway)")
OVERLOADED = Answer(503, "OVERLOADED", "the service is at its in-flight limit (gateway)")
UPSTREAM_UNAVAILABLE = Answer(503, "UPSTREAM_UNAVAILABLE", "no replica can answer now (gateway)")
UPSTREAM_UNREACHABLE = Answer(502, "UPSTREAM_UNAVAILABLE", "the replica could not be reached (gateway)")
UPSTREAM_TIMEOUT = Answer(504, "UPSTREAM_TIMEOUT", "the replica did not answer in time (gateway)")
DEPENDENCY_UNAVAILABLE = Answer(503, "DEPENDENCY_UNAVAILABLE", "a database or service it needs is not answering")
IDEMPOTENCY_ANSWERS = tuple(
    Answer.of(error) for error in (IdempotencyKeyRequired, IdempotencyKeyInFlight, IdempotencyKeyReused)
)

EVERY_OPERATION = (
    DUPLICATE_AUTHORIZATION,
    RATE_LIMITED,
    OVERLOADED,
    UPSTREAM_UNAVAILABLE,
    UPSTREAM_UNREACHABLE,
    UPSTREAM_TIMEOUT,
    DEPENDENCY_UNAVAILABLE,
)
WITH_BODY = (MALFORMED_JSON, BODY_TIMEOUT, TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, VALIDATION)

_CUSTOMER_DEPENDENCY = get_args(CurrentUser)[1].dependency
_ADMIN_DEPENDENCY = get_args(AdminUser)[1].dependency
_IDEMPOTENCY_DEPENDENCY = get_args(IdempotencyKey)[1].dependency


def problems(*errors: type[ProblemError] | Answer) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each status its errors answer, as problem+json with their codes."""
    return _responses(Answer.of(e) for e in errors)


def _responses(answers: Iterable[Answer]) -> dict[int | str, dict[str, Any]]:
    by_status: dict[int, dict[str, str]] = {}
    for answer in answers:
        codes = by_status.setdefault(answer.status, {})
        codes.setdefault(answer.code, answer.when)
    return {status: _problem_response(codes) for status, codes in sorted(by_status.items())}


def _problem_response(codes: dict[str, str]) -> dict[str, Any]:
    lines = [f"`{code}`: {when}" if when else f"`{code}`" for code, when in codes.items()]
    return {
        "description": " | ".join(lines),
        "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}},
        "x-problem-codes": codes,  # code -> when it is answered
    }


def _merge(operation: dict[str, Any], answers: Iterable[Answer]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status, added in _responses(answers).items():
        current = responses.get(str(status))
        if current is None or PROBLEM_JSON not in current.get("content", {}):
            responses[str(status)] = added  # FastAPI's own 422 (application/json, its own schema) is replaced
        else:
            codes = dict(current["x-problem-codes"])  # the route's own wording of a code comes first
            for code, when in added["x-problem-codes"].items():
                codes.setdefault(code, when)
            responses[str(status)] = _problem_response(codes)
    operation["responses"] = dict(sorted(responses.items()))


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def _idempotency_parameter() -> dict[str, Any]:
    return {
        "name": IDEMPOTENCY_HEADER,
        "in": "header",
        "required": True,
        "description": "One key per intended action: a retry with the same key gets the first answer, "
        "the same key with another request is refused (IDEMPOTENCY_KEY_REUSED)",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": KEY_PATTERN},
    }


def _describe(dependant: Dependant, operation: dict[str, Any], around: tuple[Answer, ...]) -> None:
    calls = set(_calls(dependant))
    admin = _ADMIN_DEPENDENCY in calls
    answers: list[Answer] = [*EVERY_OPERATION, *around]
    if admin or _CUSTOMER_DEPENDENCY in calls:
        operation["security"] = [{BEARER: []}]
        answers.append(UNAUTHENTICATED)
    if admin:
        answers.append(FORBIDDEN)
        note = "Requires a bearer token with the admin role; the call is audited."
        operation["description"] = f"{operation.get('description', '').rstrip()}\n\n{note}".lstrip()
    parameters: list[dict[str, Any]] = operation.setdefault("parameters", [])
    keyed = [p for p in parameters if p["name"].lower() == IDEMPOTENCY_HEADER.lower()]
    if _IDEMPOTENCY_DEPENDENCY in calls and not keyed:
        parameters.append(_idempotency_parameter())
    for parameter in keyed:  # an optional key (admin changes) is checked by the same rules when sent
        parameter.update(_idempotency_parameter(), required=parameter.get("required", False))
    if _IDEMPOTENCY_DEPENDENCY in calls or keyed:
        answers.extend(IDEMPOTENCY_ANSWERS)
    if "requestBody" in operation:
        answers.extend(WITH_BODY)
    if parameters:
        answers.append(VALIDATION)
    if any(p["in"] == "path" for p in parameters):
        answers.append(NOT_FOUND)
    if not parameters:
        del operation["parameters"]
    _merge(operation, answers)


def document(app: FastAPI, public_prefix: str, around: tuple[Answer, ...] = ()) -> dict[str, Any]:
    """The app's OpenAPI document, with problems, auth and headers declared on every operation; `around` are
    answers of this service every operation can give (e.g. its code for Redis not answering)."""
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        servers=[{"url": public_prefix or "/"}],
    )
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and route.include_in_schema:
            for method in route.methods or ():
                operation = schema.get("paths", {}).get(route.path_format, {}).get(method.lower())
                if operation is not None:
                    _describe(route.dependant, operation, around)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Problem"] = PROBLEM_SCHEMA
    components["securitySchemes"] = {BEARER: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
    return schema


def install_openapi(app: FastAPI, public_prefix: str, around: tuple[Answer, ...] = ()) -> None:
    """Serve `document(app)` as the app's /openapi.json (built once, after every router is included)."""

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            app.openapi_schema = document(app, public_prefix, around)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

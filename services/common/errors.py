"""RFC 9457 problem+json errors with a stable machine-readable `code`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from redis.exceptions import ClusterDownError, RedisClusterUnreachableError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("service.errors")


class ProblemError(Exception):
    """A domain error answered as problem+json; raising it is the only way handlers fail."""

    status: int = 400
    code: str = "BAD_REQUEST"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if title is not None:
            self.title = title
        self.detail = detail or self.title
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    """Build a problem+json response."""
    body: dict[str, Any] = {
        "type": f"https://flashsale.dev/problems/{code.lower().replace('_', '-')}",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


# Failures that mean "a dependency is unavailable right now". asyncpg's connection errors arrive as OSError
# (refused, reset) or wrapped by SQLAlchemy as InterfaceError / OperationalError (a server shutting down or
# starting up, a connection closed under a query).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    RedisConnectionError,
    RedisTimeoutError,
    # A Redis Cluster with slots no master serves (a master down, its replica not yet promoted), or none of
    # its nodes reachable.
    ClusterDownError,
    SlotNotCoveredError,
    RedisClusterUnreachableError,
    InterfaceError,
    OperationalError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, crashed, starting up
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, out of memory or disk
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure: retrying succeeds
    SQLAlchemyTimeoutError,  # no pooled connection free in time
)
# A statement cut off by statement_timeout fails the same way every time: the entry's fault, not an outage.
NOT_TRANSIENT: tuple[type[BaseException], ...] = (asyncpg.exceptions.QueryCanceledError,)


def is_transient(exc: BaseException) -> bool:
    """True when a failure says a dependency is unavailable (connection refused or lost, timeout, a database
    shutting down or starting up) rather than that the entry itself cannot be handled."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(isinstance(e, NOT_TRANSIENT) for e in chain):  # libraries wrap it in errors that look transient
        return False
    return any(
        isinstance(e, TRANSIENT_ERRORS) or (isinstance(e, DBAPIError) and e.connection_invalidated) for e in chain
    )


_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the request's path answers (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    path = request.scope["path"]
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= route.methods or set()
    return sorted(methods)


def _validation_detail(exc: RequestValidationError) -> tuple[str, str, list[dict[str, Any]]]:
    errors = []
    malformed = False
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            malformed = True
        errors.append({"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))})
    if malformed:
        return "MALFORMED_JSON", "Request body is not valid JSON", errors
    first = errors[0] if errors else {"loc": [], "msg": "invalid"}
    where = ".".join(p for p in first["loc"] if p != "body") or "request"
    return "VALIDATION_ERROR", f"{where}: {first['msg']}", errors


def install_error_handlers(app: FastAPI) -> None:
    """Turn every error into problem+json; unexpected errors become a 500 without internals."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> Response:
        return problem_response(
            exc.status,
            exc.code,
            exc.detail,
            title=exc.title,
            instance=request.url.path,
            headers=exc.headers,
            extra=exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        code, detail, errors = _validation_detail(exc)
        status = 400 if code == "MALFORMED_JSON" else 422
        return problem_response(status, code, detail, instance=request.url.path, extra={"errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
        detail = str(exc.detail)
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI's answer to a body it could not decode (e.g. JSON in an encoding it guessed wrong).
            code, detail = "MALFORMED_JSON", "Request body is not valid JSON"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return problem_response(exc.status_code, code, detail, instance=request.url.path, headers=headers)

    async def _dependency(request: Request, exc: Exception) -> Response:
        if not is_transient(exc):
            return await _unexpected(request, exc)
        # The database (or another dependency) is down: say so, and when to come back; not a 500.
        log.warning("dependency unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return problem_response(
            503,
            "DEPENDENCY_UNAVAILABLE",
            "A dependency of this service is not answering; retry shortly",
            instance=request.url.path,
            headers={"Retry-After": "2"},
        )

    kinds = (
        DBAPIError,
        SQLAlchemyTimeoutError,
        OSError,
        asyncpg.exceptions.PostgresError,
        asyncpg.exceptions.InterfaceError,
    )
    for kind in kinds:
        app.add_exception_handler(kind, _dependency)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "INTERNAL_ERROR", "Internal error", instance=request.url.path)

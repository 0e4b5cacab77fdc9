"""`add_service_defaults(app)`: health, metrics, JSON logs, request ids, body limits, problem+json."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisClusterUnreachableError, RedisError, SlotNotCoveredError
from sqlalchemy import text
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.config import BaseServiceSettings
from services.common.errors import install_error_handlers, problem_response
from services.common.json_body import BODY_METHODS, body_problem
from services.common.logs import configure_logging, request_id_var
from services.common.metrics import GaugeTable, RequestMetrics
from services.common.openapi import Answer, install_openapi
from services.common.resources import ping_redis
from services.common.tracing import configure_tracing

log = logging.getLogger("service.access")

HTTP_METRICS = RequestMetrics(
    counter="http_requests_total",
    counter_help="HTTP requests served",
    counter_labels=["method", "route", "status"],
    histogram="http_request_duration_seconds",
    histogram_help="HTTP request latency",
    histogram_labels=["route"],
)
DEPENDENCY_UP = GaugeTable(
    "service_dependency_up",
    "1 while a dependency (redis, postgres, ...) answers the service's readiness check",
    ["dependency"],
)

ReadyCheck = Callable[[], Awaitable[None]]


class ServiceMiddleware:
    """Pure ASGI middleware (no per-request task) for request ids, body limits and media type, metrics and
    access logs."""

    def __init__(self, app: ASGIApp, *, max_body: int, access_log: bool) -> None:
        self.app = app
        self.max_body = max_body
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        declared = -1
        content_type: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:128]
            elif name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
            elif name == b"content-type":
                content_type = value
        if not rid:
            rid = os.urandom(16).hex()  # uuid4().hex costs ~15x more, on every request
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status_holder = [500]
        rid_header = (b"x-request-id", rid.encode("latin-1"))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            if declared > self.max_body:
                await self._too_large(scope, receive, send_wrapper)
                return
            if declared != 0 and scope["method"] in BODY_METHODS:
                # The whole body (up to the limit) is read before the app sees a byte: chunked bodies are
                # bounded, and a body that is not JSON in UTF-8 is refused the same way on every route.
                message = await receive()
                if message.get("more_body", False):
                    message = await self._rest_of_body(message, receive)
                body = message.get("body", b"")
                if len(body) > self.max_body:
                    await self._too_large(scope, receive, send_wrapper)
                    return
                # The usual body (declared JSON, ASCII) skips the checks' function calls.
                if body and not (content_type == b"application/json" and body.isascii()):
                    refusal = body_problem(content_type, body, scope["path"])
                    if refusal is not None:
                        await refusal(scope, receive, send_wrapper)
                        return
                replay: list[Message] = [message]

                async def buffered_receive() -> Message:
                    return replay.pop() if replay else await receive()

                await self.app(scope, buffered_receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            HTTP_METRICS.observe((scope["method"], label, status_holder[0]), (label,), elapsed)
            if self.access_log:
                log.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    status_holder[0],
                    extra={"status": status_holder[0], "ms": round(elapsed * 1000, 2)},
                )
            request_id_var.reset(token)

    async def _rest_of_body(self, first: Message, receive: Receive) -> Message:
        """The whole body as one message, read on from `first`; reading stops once it exceeds the limit."""
        buffer = bytearray(first.get("body", b""))
        while len(buffer) <= self.max_body:
            message = await receive()
            if message["type"] != "http.request":
                break
            buffer += message.get("body", b"")
            if not message.get("more_body", False):
                break
        return {"type": "http.request", "body": bytes(buffer), "more_body": False}

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = problem_response(
            413, "PAYLOAD_TOO_LARGE", f"Request body exceeds {self.max_body} bytes", instance=scope["path"]
        )
        await resp(scope, receive, send)


def service_app(
    settings: BaseServiceSettings,
    *,
    title: str,
    description: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    ready_checks: dict[str, ReadyCheck] | None = None,
    redis_down_code: str = "REDIS_UNAVAILABLE",
    serves_without: frozenset[str] = frozenset(),
    public_prefix: str | None = None,
) -> FastAPI:
    """A FastAPI app with the service defaults, as every service's `create_app` starts it.

    `serves_without` names dependencies (`postgres`, `redis`) whose outage readiness reports as
    `degraded` without failing: part of the API still works without each of them (the rest answers 503 with
    the service's own code), so a gateway must not take the service out of its pool for that. `public_prefix`
    is the path clients reach it under (its OpenAPI `servers` entry): the gateway's `/api/<service name>`
    unless given ("" for a service served at the root).
    """
    app = FastAPI(
        title=title,
        version="0.1.0",
        description=description,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks check providers and the environment on every request;
        # we export Prometheus metrics instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    add_service_defaults(app, settings, ready_checks, redis_down_code=redis_down_code, serves_without=serves_without)
    install_openapi(
        app,
        f"/api/{settings.service_name}" if public_prefix is None else public_prefix,
        around=(Answer(503, redis_down_code, "Redis is not answering; retry shortly"),),
    )
    return app


def add_service_defaults(
    app: FastAPI,
    settings: BaseServiceSettings,
    ready_checks: dict[str, ReadyCheck] | None = None,
    *,
    redis_down_code: str = "REDIS_UNAVAILABLE",
    serves_without: frozenset[str] = frozenset(),
) -> None:
    """Add health, readiness, metrics, logging, request ids, body limits and problem+json errors.

    A Redis error that reaches a handler fails closed: 503 with `redis_down_code`, never a 500.
    """
    configure_logging(settings.service_name, settings.log_level)
    configure_tracing(settings.service_name)
    install_error_handlers(app)

    # The cluster client's "no node reachable" and "slot not covered" are not RedisErrors; they mean the same.
    @app.exception_handler(RedisClusterUnreachableError)
    @app.exception_handler(SlotNotCoveredError)
    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: Exception) -> Response:
        log.warning("redis unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return problem_response(
            503,
            redis_down_code,
            "Redis is not answering; retry shortly",
            instance=request.url.path,
            headers={"Retry-After": "1"},
        )

    app.add_middleware(ServiceMiddleware, max_body=settings.max_body_bytes, access_log=settings.access_log)

    @app.get("/healthz/live", include_in_schema=False)
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    async def check_dependencies(request: Request) -> tuple[dict[str, Any], list[str]]:
        checks: dict[str, Any] = {}
        failing: list[str] = []
        for name, check in default_ready_checks(request.app).items() | (ready_checks or {}).items():
            try:
                await check()
                checks[name] = "ok"
            except Exception as exc:  # readiness must report, never raise
                failing.append(name)
                checks[name] = f"{'degraded' if name in serves_without else 'error'}: {type(exc).__name__}"
        DEPENDENCY_UP.replace({(name,): float(name not in failing) for name in checks})
        return checks, failing

    @app.get("/healthz/ready", include_in_schema=False)
    async def ready(request: Request) -> Response:
        checks, failing = await check_dependencies(request)
        if not is_ready(failing, len(checks), serves_without):
            return problem_response(503, "NOT_READY", "A dependency is not answering", extra={"checks": checks})
        status = "degraded" if failing else "ok"
        return Response(orjson.dumps({"status": status, "checks": checks}), media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        # Each dependency's gauge is checked at scrape time (a ping each): the alert sees the outage it scrapes.
        await check_dependencies(request)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def is_ready(failing: list[str], checked: int, serves_without: frozenset[str]) -> bool:
    """Ready while every failing dependency is one the service serves without, and not all of them fail."""
    if not failing:
        return True
    return len(failing) < checked and all(name in serves_without for name in failing)


def default_ready_checks(app: FastAPI) -> dict[str, ReadyCheck]:
    """Ping the Redis pool and database engine the lifespan opened, if any."""
    checks: dict[str, ReadyCheck] = {}
    redis = getattr(app.state, "redis", None)
    engine = getattr(app.state, "engine", None)
    if redis is not None:

        async def redis_serves() -> None:
            await ping_redis(redis)

        checks["redis"] = redis_serves
    if engine is not None:

        async def ping_db() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        checks["postgres"] = ping_db
    return checks

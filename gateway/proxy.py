"""The proxy path: a pure ASGI handler for `/api/<service>/...` (no framework routing per request).

A request goes through stages in order: route, authenticate, read the body, admit (load shedding, rate
limits), forward (with its retry), and record (metrics, access log). Each stage reads and fills in the one
`ProxyRequest` built from the scope; a stage that answers the request itself raises `EarlyAnswer`, which
`Proxy.__call__` catches and sends.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from opentelemetry.trace import SpanKind, Tracer
from prometheus_client import Counter
from starlette.types import Receive, Scope, Send

from gateway import errors
from gateway.auth import bearer_token, has_dot_segment, is_admin_path
from gateway.config import SERVICES, GatewaySettings
from gateway.errors import EarlyAnswer
from gateway.pools import Pool, Replica, is_replica_failure
from gateway.ratelimit import LimitClass, RateLimiter, RefusedAddresses
from gateway.request import HOP_BY_HOP, NO_BODY, ProxyRequest
from gateway.routes import is_internal_path, is_purchase, long_poll_wait
from gateway.upstream import UpstreamError, UpstreamResponse, UpstreamTimeout
from services.common import tracing
from services.common.auth import TokenVerifier, Unauthenticated
from services.common.metrics import RequestMetrics

log = logging.getLogger("gateway.access")

METRICS = RequestMetrics(
    counter="gateway_requests_total",
    counter_help="Requests answered by the proxy",
    counter_labels=["route", "upstream", "status"],
    histogram="gateway_request_duration_seconds",
    histogram_help="Proxy latency, gateway in to gateway out",
    histogram_labels=["route", "upstream"],
)
RETRIES = Counter("gateway_retries_total", "Requests retried on another replica", ["route", "reason"])

# The gateway's server adds its own date and server headers; the body length is set from the body.
DROP_RESPONSE = HOP_BY_HOP | {b"content-length", b"date", b"server"}
CLOSE_CONNECTION = [(b"connection", b"close")]


@functools.cache
def _retries(route: str, reason: str) -> Any:
    return RETRIES.labels(route, reason)


def _body_is_in(receive: Receive) -> bool:
    """True when the server has the whole request body already, so reading it cannot wait on the client.

    uvicorn's `receive` is a method of its request cycle, whose `more_body` turns False once the body is
    complete (a small body comes in the packet of its headers). Sparing the deadline then spares a timer and
    a cancellation scope per request (~5 % of the gateway's CPU per purchase); any other server gets it.
    """
    return getattr(getattr(receive, "__self__", None), "more_body", True) is False


class Proxy:
    """Routes `/api/<service>/<rest>` to `<rest>` on a replica of the service's pool."""

    def __init__(self, settings: GatewaySettings, pools: dict[str, Pool], verifier: TokenVerifier) -> None:
        self.pools = pools
        self.verifier = verifier
        self.limiter: RateLimiter | None = None  # set by the lifespan once Redis is opened
        self.max_body = settings.max_body_bytes
        self.body_timeout = settings.body_timeout_seconds
        self.timeouts = {name: settings.timeout_for(name) for name in SERVICES}
        self.purchase_timeout = settings.purchase_timeout
        self.long_poll_max = settings.long_poll_max_seconds
        self.long_poll_margin = settings.long_poll_margin_seconds
        self.retry_after = [(b"retry-after", b"%d" % settings.shed_retry_after_seconds)]
        self.proxy_hops = settings.trusted_proxy_hops
        self.access_log = settings.access_log
        self.prefixes = {name: f"/api/{name}".encode() for name in SERVICES}
        self.refused_ips = RefusedAddresses()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one proxied request: its stages, the answer of the one that ended it, and its record."""
        request = ProxyRequest(scope, self.proxy_hops)
        tracer = tracing.TRACER
        if tracer is not None:
            await self._traced(tracer, request, receive, send)
        else:
            # Inline, not through _answer: the untraced path keeps its one coroutine per request.
            try:
                await self._serve(request, receive, send)
            except EarlyAnswer as answer:
                request.status = answer.status
                await answer.send(send, instance=request.path, request_id=request.rid)
        self._record(request)

    async def _answer(self, request: ProxyRequest, receive: Receive, send: Send) -> None:
        """The stages, and the answer of the one that ended the request early (the traced path's)."""
        try:
            await self._serve(request, receive, send)
        except EarlyAnswer as answer:
            request.status = answer.status
            await answer.send(send, instance=request.path, request_id=request.rid)

    async def _traced(self, tracer: Tracer, request: ProxyRequest, receive: Receive, send: Send) -> None:
        """The request inside a gateway span, the client's traceparent its parent; the replica gets the span's."""
        incoming = None
        for name, value in request.scope["headers"]:
            if name == b"traceparent":
                incoming = tracing.valid_traceparent(value.decode("latin-1"))
        span, traceparent = tracing.begin(tracer, "gateway", incoming, SpanKind.SERVER)
        if traceparent != incoming:
            # The replica gets this hop's context, not the client's (forwarded as it came when the two are one).
            request.forward = [h for h in request.forward if not h.startswith(b"traceparent:")]
            request.traceparent = traceparent.encode()
        try:
            await self._answer(request, receive, send)
        finally:
            if span is not None:
                span.update_name(f"gateway {request.route}")
                span.set_attributes(
                    {
                        "http.request.method": request.method,
                        "http.route": request.route,
                        "http.response.status_code": request.status,
                        "gateway.upstream": request.upstream,
                    }
                )
                span.end()

    async def _serve(self, request: ProxyRequest, receive: Receive, send: Send) -> None:
        """The stages in order; any of them may end the request with an EarlyAnswer."""
        pool = self._route(request)
        await self._authenticate(request)
        # The body is read before a pool slot is taken, and within a deadline: a client trickling its body
        # must not hold a slot (enough of them would shut the service out for everyone).
        await self._read_body(request, receive)
        self._shed_load(request, pool)
        pool.in_flight += 1
        try:
            await self._admit(request)
            await self._forward(request, pool, send)
        finally:
            pool.in_flight -= 1

    def _route(self, request: ProxyRequest) -> Pool:
        """The pool that serves the request, and the route and rate class it is counted under."""
        if request.duplicate_auth:
            # The gateway and a service could each pick another one: who is calling must be unambiguous.
            raise EarlyAnswer(400, errors.BAD_REQUEST, "Send one Authorization header")
        pool = self.pools.get(request.service)
        rest = request.rest
        if pool is None or has_dot_segment(rest) or is_internal_path(rest):
            raise EarlyAnswer(404, errors.NOT_FOUND, f"No route for {request.path}")
        if is_purchase(request.method, rest):
            request.purchase = True
            request.route = "flashsale.purchase"
            request.limits = LimitClass.PURCHASE
        else:
            request.route = request.service
        return pool

    async def _authenticate(self, request: ProxyRequest) -> None:
        """Who is calling (from the bearer token, when there is one); admin paths need the admin role."""
        authorization = request.authorization
        if authorization is not None:
            client_ip = request.client_ip
            try:
                token = bearer_token(authorization)
                # A token not verified here yet costs a signature check; an address whose refused tokens have
                # emptied its bucket gets its 429 without one, so made-up tokens meet the bucket, not our CPU.
                principal = self.verifier.cached(token)
                if principal is None:
                    wait = self.refused_ips.wait(client_ip)
                    if wait:
                        raise errors.rate_limited(wait)
                    principal = await self.verifier.authenticate(token)
            except Unauthenticated as exc:
                # A refused token takes a token from the address's bucket like any other request.
                limiter = self.limiter
                wait = await limiter.check(None, client_ip, request.limits) if limiter is not None else 0
                if wait:
                    self.refused_ips.block(client_ip, wait)
                    raise errors.rate_limited(wait) from None
                raise errors.unauthenticated(exc.detail) from None
            request.principal = principal
            request.user_id = principal.user_id
        if is_admin_path(request.rest):
            principal = request.principal
            if principal is None:
                raise errors.unauthenticated("Missing bearer token")
            if not principal.is_admin:
                raise EarlyAnswer(403, errors.FORBIDDEN, "The admin role is required")
            request.limits = LimitClass.ADMIN

    async def _read_body(self, request: ProxyRequest, receive: Receive) -> None:
        """The whole request body, at most max_body bytes, within the body deadline when it is not in yet."""
        declared = request.declared
        if declared > self.max_body:
            raise errors.too_large(self.max_body)
        try:
            if (declared > 0 or request.chunked) and not _body_is_in(receive):
                async with asyncio.timeout(self.body_timeout):
                    request.body = await self._receive_body(receive)
            else:
                request.body = await self._receive_body(receive)
        except TimeoutError:
            raise EarlyAnswer(
                408, errors.REQUEST_TIMEOUT, "The request body did not arrive in time", CLOSE_CONNECTION
            ) from None

    async def _receive_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise EarlyAnswer(errors.CLIENT_GONE, None)
            chunk: bytes = message.get("body", NO_BODY)
            if chunk:
                size += len(chunk)
                if size > self.max_body:
                    raise errors.too_large(self.max_body)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _shed_load(self, request: ProxyRequest, pool: Pool) -> None:
        """Load shedding before anything that costs: past the pool's limit answer at once, never queue."""
        if pool.in_flight >= pool.max_in_flight:
            pool.shed += 1
            raise EarlyAnswer(
                503,
                errors.OVERLOADED,
                f"The {request.service} pool is at its in-flight limit; retry shortly",
                self.retry_after,
            )

    async def _admit(self, request: ProxyRequest) -> None:
        """The rate limits of the request's class: the caller's bucket and its address's."""
        limiter = self.limiter
        if limiter is not None:
            wait = await limiter.check(request.user_id, request.client_ip, request.limits)
            if wait:
                raise errors.rate_limited(wait)

    async def _forward(self, request: ProxyRequest, pool: Pool, send: Send) -> None:
        """Send the request to a replica (again to another when that is safe) and relay its answer."""
        self._prepare(request)
        response = await self._exchange(request, pool)
        await self._relay(request, response, pool.name, send)

    def _prepare(self, request: ProxyRequest) -> None:
        """The bytes a replica gets and the rules of the exchange: its timeout, whether it may be resent."""
        service = request.service
        request.build_upstream_head(self.prefixes[service])
        answer_within = self.purchase_timeout if request.purchase else self.timeouts[service]
        # A long-poll is answered after its wait: the timeout covers it, and a retry would wait it again.
        held = long_poll_wait(service, request.method, request.rest, request.scope["query_string"], self.long_poll_max)
        if held:
            request.answer_within = max(answer_within, held + self.long_poll_margin)
            request.resend_after_timeout = False
        else:
            request.answer_within = answer_within

    async def _exchange(self, request: ProxyRequest, pool: Pool) -> UpstreamResponse:
        """A replica's complete answer, retried once on another replica when it is safe to send twice."""
        now = time.monotonic()
        replica: Replica | None = pool.pick(now)
        if replica is None:
            raise errors.unavailable(503, "no replica is available", self.retry_after)
        retried = False
        while True:
            probe = replica.breaker.begin()
            replica.in_flight += 1
            response: UpstreamResponse | None = None
            error: UpstreamError | None = None
            try:
                response = await replica.client.request(
                    request.request_line + replica.client.host_header + request.tail,
                    request.body,
                    answer_within=request.answer_within,
                    head=request.head,
                )
            except UpstreamError as exc:
                error = exc
            except BaseException:
                # The client went away (cancelled): no verdict, but a half-open probe slot must be given back.
                if probe:
                    replica.breaker.release_probe()
                raise
            finally:
                replica.in_flight -= 1
            now = time.monotonic()
            pool.record(replica, is_replica_failure(response), probe, now)
            # Retry once on another replica: only what is safe to send twice (GET, or a keyed POST whose
            # upstream replays the first answer); a keyless POST is never sent again.
            if response is not None:
                resend = response.status == 503
            else:
                resend = request.resend_after_timeout or not isinstance(error, UpstreamTimeout)
            if resend and request.retryable and not retried:
                other = pool.pick(now, exclude=replica)
                if other is not None:
                    _retries(request.route, error.kind if error is not None else "503").inc()
                    replica, retried = other, True
                    continue
            break
        if response is None:
            if isinstance(error, UpstreamTimeout):
                request.upstream = replica.url
                raise EarlyAnswer(504, errors.UPSTREAM_TIMEOUT, f"The {pool.name} service did not answer in time")
            raise errors.unavailable(502, f"the {pool.name} service could not be reached", self.retry_after)
        request.upstream = replica.url
        return response

    async def _relay(self, request: ProxyRequest, response: UpstreamResponse, service: str, send: Send) -> None:
        """The replica's answer to the client, its hop-by-hop headers dropped and redirects kept on the gateway."""
        headers = []
        has_rid = False
        for name, value in response.headers:
            if name not in DROP_RESPONSE:
                if name == b"location":
                    value = self._public_location(value, service, request.upstream)
                headers.append((name, value))
                if name == b"x-request-id":
                    has_rid = True
        if not has_rid:
            headers.append((b"x-request-id", request.rid))
        if request.head:
            headers.extend((n, v) for n, v in response.headers if n == b"content-length")
        else:
            headers.append((b"content-length", b"%d" % len(response.body)))
        request.status = status = response.status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    def _record(self, request: ProxyRequest) -> None:
        """Count the request under its route, upstream and status, and log it when the access log is on."""
        elapsed = time.perf_counter() - request.start
        route = request.route
        upstream = request.upstream
        status = request.status
        METRICS.observe((route, upstream, status), (route, upstream), elapsed)
        if self.access_log:
            # Path only: query strings and headers (tokens) are never logged.
            log.info(
                "%s %s %s",
                request.method,
                request.path,
                status,
                extra={
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    "route": route,
                    "upstream": upstream,
                    "request_id": request.rid.decode("latin-1"),
                    "user_id": request.user_id,
                },
            )

    def _public_location(self, location: bytes, service: str, replica_url: str) -> bytes:
        """A redirect as the client must follow it: through the gateway, never to a replica's own address."""
        own = replica_url.encode()
        if location.startswith(own):
            location = location[len(own) :] or b"/"
        if location.startswith(b"/") and not location.startswith(b"//"):
            return self.prefixes[service] + location
        return location

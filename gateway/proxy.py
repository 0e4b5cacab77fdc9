"""The proxy path: a pure ASGI handler for `/api/<service>/...` (no framework routing per request)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from random import getrandbits
from typing import Any
from urllib.parse import quote

from prometheus_client import Counter
from starlette.types import Receive, Scope, Send

from gateway import errors
from gateway.auth import bearer_token, has_dot_segment, is_admin_path
from gateway.config import SERVICES, GatewaySettings
from gateway.pools import Pool, Replica, is_replica_failure
from gateway.ratelimit import LimitClass, RateLimiter, RefusedAddresses
from gateway.routes import is_internal_path, is_purchase, long_poll_wait
from gateway.upstream import UpstreamError, UpstreamResponse, UpstreamTimeout
from services.common.auth import Principal, TokenVerifier, Unauthenticated
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

# RFC 9110 7.6.1 hop-by-hop headers, plus the pre-standard proxy-connection.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the gateway itself: identity headers a client sends are dropped, never trusted.
OWN_REQUEST_HEADERS = frozenset(
    {b"host", b"content-length", b"expect", b"x-user-id", b"x-user-roles", b"x-request-id", b"x-forwarded-for"}
)
DROP_REQUEST = HOP_BY_HOP | OWN_REQUEST_HEADERS
# The gateway's server adds its own date and server headers; the body length is set from the body.
DROP_RESPONSE = HOP_BY_HOP | {b"content-length", b"date", b"server"}
RETRYABLE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
NO_BODY = b""


@functools.lru_cache(maxsize=256)
def _roles_header(roles: frozenset[str]) -> bytes:
    # Role sets are few (customer, admin, both): each one's header line is built once.
    return b"x-user-roles: " + " ".join(sorted(roles)).encode()


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


class _ClientGone(Exception):
    """The client disconnected before its request body was in."""


class _BodyTooLarge(Exception):
    """The request body passed the limit."""


@dataclass(slots=True)
class UpstreamCall:
    """One request as a replica gets it (all but the Host line), and the rules of its exchange."""

    request_line: bytes
    tail: bytes
    body: bytes
    answer_within: float
    retryable: bool  # safe to send twice: a GET, or a keyed POST whose upstream replays its first answer
    resend_after_timeout: bool  # False for a long-poll: its timeout already spent the whole wait
    head: bool


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
        self.retry_after = b"%d" % settings.shed_retry_after_seconds
        self.proxy_hops = settings.trusted_proxy_hops
        self.access_log = settings.access_log
        self.prefixes = {name: f"/api/{name}".encode() for name in SERVICES}
        self.refused_ips = RefusedAddresses()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one proxied request."""
        start = time.perf_counter()
        status, route, upstream, rid, user = await self._serve(scope, receive, send)
        elapsed = time.perf_counter() - start
        METRICS.observe((route, upstream, status), (route, upstream), elapsed)
        if self.access_log:
            # Path only: query strings and headers (tokens) are never logged.
            log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    "route": route,
                    "upstream": upstream,
                    "request_id": rid.decode("latin-1"),
                    "user_id": user,
                },
            )

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> tuple[int, str, str, bytes, str | None]:
        path: str = scope["path"]
        method: str = scope["method"]
        service, sep, rest = path[5:].partition("/")  # path starts with "/api/"
        rest = sep + rest or "/"

        # One pass over the client's headers: what to forward, and what the gateway itself needs.
        rid = b""
        authorization = None
        duplicate_auth = False
        keyed = False
        chunked = False
        forwarded_for = b""
        declared = -1
        connection_tokens: list[bytes] = []
        forward: list[bytes] = []
        for name, value in scope["headers"]:
            if name in DROP_REQUEST:
                if name == b"x-request-id":
                    rid = value[:128]
                elif name == b"content-length":
                    declared = int(value) if value.isdigit() else -1
                elif name == b"x-forwarded-for":
                    forwarded_for = value
                elif name == b"connection":
                    connection_tokens.extend(t.strip().lower() for t in value.split(b","))
                elif name == b"transfer-encoding":
                    chunked = True
                continue
            if name == b"authorization":
                duplicate_auth = authorization is not None
                authorization = value
            elif name == b"idempotency-key":
                keyed = True
            forward.append(name + b": " + value)
        if not rid:
            # A unique id, not a secret: no system call (os.urandom) or uuid4 (~7x slower) on every request.
            rid = b"%032x" % getrandbits(128)

        if duplicate_auth:
            # The gateway and a service could each pick another one: who is calling must be unambiguous.
            await errors.send_problem(
                send, 400, errors.BAD_REQUEST, "Send one Authorization header", instance=path, request_id=rid
            )
            return 400, "unmatched", "none", rid, None
        pool = self.pools.get(service)
        if pool is None or has_dot_segment(rest) or is_internal_path(rest):
            await errors.send_problem(
                send, 404, errors.NOT_FOUND, f"No route for {path}", instance=path, request_id=rid
            )
            return 404, "unmatched", "none", rid, None
        purchase = is_purchase(method, rest)
        route = "flashsale.purchase" if purchase else service
        limits = LimitClass.PURCHASE if purchase else LimitClass.SHOPPING

        principal: Principal | None = None
        client_ip = self._client_ip(scope, forwarded_for)
        if authorization is not None:
            try:
                token = bearer_token(authorization)
                # A token not verified here yet costs a signature check; an address whose refused tokens have
                # emptied its bucket gets its 429 without one, so made-up tokens meet the bucket, not our CPU.
                principal = self.verifier.cached(token)
                if principal is None:
                    wait = self.refused_ips.wait(client_ip)
                    if wait:
                        await self._rate_limited(send, path, rid, wait)
                        return 429, route, "none", rid, None
                    principal = await self.verifier.authenticate(token)
            except Unauthenticated as exc:
                # A refused token takes a token from the address's bucket like any other request.
                wait = await self.limiter.check(None, client_ip, limits) if self.limiter is not None else 0
                if wait:
                    self.refused_ips.block(client_ip, wait)
                    await self._rate_limited(send, path, rid, wait)
                    return 429, route, "none", rid, None
                await self._unauthenticated(send, exc.detail, path, rid)
                return 401, route, "none", rid, None
        if is_admin_path(rest):
            if principal is None:
                await self._unauthenticated(send, "Missing bearer token", path, rid)
                return 401, route, "none", rid, None
            if not principal.is_admin:
                await errors.send_problem(
                    send, 403, errors.FORBIDDEN, "The admin role is required", instance=path, request_id=rid
                )
                return 403, route, "none", rid, principal.user_id
            limits = LimitClass.ADMIN
        user_id = principal.user_id if principal is not None else None

        # The body is read before a pool slot is taken, and within a deadline: a client trickling its body
        # must not hold a slot (enough of them would shut the service out for everyone).
        if declared > self.max_body:
            await self._too_large(send, path, rid)
            return 413, route, "none", rid, user_id
        try:
            if (declared > 0 or chunked) and not _body_is_in(receive):
                async with asyncio.timeout(self.body_timeout):
                    body = await self._read_body(receive)
            else:
                body = await self._read_body(receive)
        except TimeoutError:
            await errors.send_problem(
                send,
                408,
                errors.REQUEST_TIMEOUT,
                "The request body did not arrive in time",
                instance=path,
                request_id=rid,
                headers=[(b"connection", b"close")],
            )
            return 408, route, "none", rid, user_id
        except _BodyTooLarge:
            await self._too_large(send, path, rid)
            return 413, route, "none", rid, user_id
        except _ClientGone:
            return 499, route, "none", rid, user_id

        # Load shedding before anything that costs: past the limit answer at once, never queue.
        if pool.in_flight >= pool.max_in_flight:
            pool.shed += 1
            await errors.send_problem(
                send,
                503,
                errors.OVERLOADED,
                f"The {service} pool is at its in-flight limit; retry shortly",
                instance=path,
                request_id=rid,
                headers=[(b"retry-after", self.retry_after)],
            )
            return 503, route, "none", rid, user_id
        pool.in_flight += 1
        try:
            if self.limiter is not None:
                wait = await self.limiter.check(user_id, client_ip, limits)
                if wait:
                    await self._rate_limited(send, path, rid, wait)
                    return 429, route, "none", rid, user_id

            # Everything but the Host line is the same on a retry to another replica.
            if connection_tokens:
                forward = [h for h in forward if h.split(b":", 1)[0] not in connection_tokens]
                # A key the client listed in Connection is not forwarded: such a POST is not safe to resend.
                keyed = keyed and b"idempotency-key" not in connection_tokens
            raw_path: bytes = scope.get("raw_path") or b""
            prefix = self.prefixes[service]
            target = raw_path[len(prefix) :] if raw_path.startswith(prefix) else quote(rest).encode()
            if not target:
                target = b"/"
            if scope["query_string"]:
                target += b"?" + scope["query_string"]
            forward.append(b"x-request-id: " + rid)
            forward.append(
                b"x-forwarded-for: " + (forwarded_for + b", " if forwarded_for else b"") + client_ip.encode()
            )
            if principal is not None:
                forward.append(b"x-user-id: " + principal.user_id.encode())
                forward.append(_roles_header(principal.roles))
            if body or method in ("POST", "PUT", "PATCH"):
                forward.append(b"content-length: %d" % len(body))
            answer_within = self.purchase_timeout if purchase else self.timeouts[service]
            # A long-poll is answered after its wait: the timeout covers it, and a retry would wait it again.
            held = long_poll_wait(service, method, rest, scope["query_string"], self.long_poll_max)
            call = UpstreamCall(
                request_line=method.encode() + b" " + target + b" HTTP/1.1\r\nhost: ",
                tail=b"\r\n" + b"\r\n".join(forward) + b"\r\n\r\n",
                body=body,
                answer_within=max(answer_within, held + self.long_poll_margin) if held else answer_within,
                retryable=keyed or method.encode() in RETRYABLE_METHODS,
                resend_after_timeout=not held,
                head=method == "HEAD",
            )
            return await self._forward(send, pool, route, path, rid, user_id, call)
        finally:
            pool.in_flight -= 1

    async def _forward(
        self, send: Send, pool: Pool, route: str, path: str, rid: bytes, user_id: str | None, call: UpstreamCall
    ) -> tuple[int, str, str, bytes, str | None]:
        now = time.monotonic()
        replica: Replica | None = pool.pick(now)
        if replica is None:
            return await self._unavailable(send, pool, route, path, rid, user_id, "no replica is available")
        retried = False
        while True:
            probe = replica.breaker.begin()
            replica.in_flight += 1
            response: UpstreamResponse | None = None
            error: UpstreamError | None = None
            try:
                response = await replica.client.request(
                    call.request_line + replica.client.host_header + call.tail,
                    call.body,
                    answer_within=call.answer_within,
                    head=call.head,
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
            status = response.status if response is not None else 0
            pool.record(replica, is_replica_failure(response), probe, now)
            # Retry once on another replica: only what is safe to send twice (GET, or a keyed POST whose
            # upstream replays the first answer); a keyless POST is never sent again.
            resend = status == 503 or (
                response is None and (call.resend_after_timeout or not isinstance(error, UpstreamTimeout))
            )
            if resend and call.retryable and not retried:
                other = pool.pick(now, exclude=replica)
                if other is not None:
                    _retries(route, error.kind if error is not None else "503").inc()
                    replica, retried = other, True
                    continue
            break
        if response is None:
            assert error is not None
            if isinstance(error, UpstreamTimeout):
                await errors.send_problem(
                    send,
                    504,
                    errors.UPSTREAM_TIMEOUT,
                    f"The {pool.name} service did not answer in time",
                    instance=path,
                    request_id=rid,
                )
                return 504, route, replica.url, rid, user_id
            return await self._unavailable(
                send, pool, route, path, rid, user_id, f"the {pool.name} service could not be reached", status=502
            )
        headers = []
        has_rid = False
        for name, value in response.headers:
            if name not in DROP_RESPONSE:
                if name == b"location":
                    value = self._public_location(value, pool.name, replica.url)
                headers.append((name, value))
                if name == b"x-request-id":
                    has_rid = True
        if not has_rid:
            headers.append((b"x-request-id", rid))
        if call.head:
            headers.extend((n, v) for n, v in response.headers if n == b"content-length")
        else:
            headers.append((b"content-length", b"%d" % len(response.body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
        return status, route, replica.url, rid, user_id

    def _public_location(self, location: bytes, service: str, replica_url: str) -> bytes:
        """A redirect as the client must follow it: through the gateway, never to a replica's own address."""
        own = replica_url.encode()
        if location.startswith(own):
            location = location[len(own) :] or b"/"
        if location.startswith(b"/") and not location.startswith(b"//"):
            return self.prefixes[service] + location
        return location

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole request body, at most max_body bytes."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk: bytes = message.get("body", NO_BODY)
            if chunk:
                size += len(chunk)
                if size > self.max_body:
                    raise _BodyTooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _unavailable(
        self,
        send: Send,
        pool: Pool,
        route: str,
        path: str,
        rid: bytes,
        user_id: str | None,
        why: str,
        status: int = 503,
    ) -> tuple[int, str, str, bytes, str | None]:
        await errors.send_problem(
            send,
            status,
            errors.UPSTREAM_UNAVAILABLE,
            f"{why.capitalize()}; retry shortly",
            instance=path,
            request_id=rid,
            headers=[(b"retry-after", self.retry_after)],
        )
        return status, route, "none", rid, user_id

    async def _rate_limited(self, send: Send, path: str, rid: bytes, wait: int) -> None:
        await errors.send_problem(
            send,
            429,
            errors.RATE_LIMITED,
            "Too many requests; slow down",
            instance=path,
            request_id=rid,
            headers=[(b"retry-after", b"%d" % wait)],
        )

    async def _unauthenticated(self, send: Send, detail: str, path: str, rid: bytes) -> None:
        await errors.send_problem(
            send,
            401,
            errors.UNAUTHENTICATED,
            detail,
            instance=path,
            request_id=rid,
            headers=[(b"www-authenticate", b"Bearer")],
        )

    async def _too_large(self, send: Send, path: str, rid: bytes) -> None:
        await errors.send_problem(
            send,
            413,
            errors.PAYLOAD_TOO_LARGE,
            f"Request body exceeds {self.max_body} bytes",
            instance=path,
            request_id=rid,
        )

    def _client_ip(self, scope: Scope, forwarded_for: bytes) -> str:
        """The client's address: the TCP peer, or the entry `trusted_proxy_hops` from the right of X-Forwarded-For."""
        if self.proxy_hops and forwarded_for:
            hops = [h.strip() for h in forwarded_for.split(b",")]
            if len(hops) >= self.proxy_hops:
                return hops[-self.proxy_hops].decode("latin-1")
        client = scope.get("client")
        return str(client[0]) if client else "unknown"

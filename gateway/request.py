"""One proxied request as the proxy's stages see it: read from the ASGI scope once, then filled in stage by stage."""

from __future__ import annotations

import functools
import time
from random import getrandbits
from urllib.parse import quote

from starlette.types import Scope

from gateway.ratelimit import LimitClass
from services.common.auth import Principal

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
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
RETRYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NO_BODY = b""


@functools.lru_cache(maxsize=256)
def _roles_header(roles: frozenset[str]) -> bytes:
    # Role sets are few (customer, admin, both): each one's header line is built once.
    return b"x-user-roles: " + " ".join(sorted(roles)).encode()


def client_address(scope: Scope, forwarded_for: bytes, proxy_hops: int) -> str:
    """The client's address: the TCP peer, or the entry `proxy_hops` from the right of X-Forwarded-For."""
    if proxy_hops and forwarded_for:
        hops = [h.strip() for h in forwarded_for.split(b",")]
        if len(hops) >= proxy_hops:
            return hops[-proxy_hops].decode("latin-1")
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class ProxyRequest:
    """What the gateway knows of one request, and what it has decided so far.

    Built once per request (one pass over the client's headers); each stage of `Proxy` reads it and adds
    its part: the route and its pool, the caller, the body, the bytes a replica gets, and finally the
    status and upstream that the metrics and the access log report. Slotted: it is made on every request.
    """

    __slots__ = (
        "answer_within",
        "authorization",
        "body",
        "chunked",
        "client_ip",
        "connection_tokens",
        "declared",
        "duplicate_auth",
        "forward",
        "forwarded_for",
        "head",
        "keyed",
        "limits",
        "method",
        "path",
        "principal",
        "purchase",
        "request_line",
        "resend_after_timeout",
        "rest",
        "retryable",
        "rid",
        "route",
        "scope",
        "service",
        "start",
        "status",
        "tail",
        "traceparent",
        "upstream",
        "user_id",
    )

    def __init__(self, scope: Scope, proxy_hops: int) -> None:
        self.start = time.perf_counter()
        self.scope = scope
        path: str = scope["path"]
        self.path = path
        self.method: str = scope["method"]
        service, sep, rest = path[5:].partition("/")  # path starts with "/api/"
        self.service = service
        self.rest = sep + rest or "/"
        # What the metrics and the access log report; the stages overwrite them as they learn more.
        self.route = "unmatched"
        self.upstream = "none"
        self.status = 0
        self.purchase = False
        self.limits = LimitClass.SHOPPING
        self.principal: Principal | None = None
        self.user_id: str | None = None
        self.body = NO_BODY
        # Set by the forwarding stage: the request as a replica gets it (all but the Host line) and its rules.
        self.request_line = NO_BODY
        self.tail = NO_BODY
        self.answer_within = 0.0
        self.retryable = False  # safe to send twice: a GET, or a keyed POST whose upstream replays its first answer
        self.resend_after_timeout = True  # False for a long-poll: its timeout already spent the whole wait
        self.head = self.method == "HEAD"
        self.traceparent = NO_BODY  # the gateway span's, set only while tracing is on
        self._read_headers(scope["headers"])
        self.client_ip = client_address(scope, self.forwarded_for, proxy_hops)

    def _read_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """One pass over the client's headers: what to forward, and what the gateway itself needs."""
        rid = b""
        authorization = None
        duplicate_auth = False
        keyed = False
        chunked = False
        forwarded_for = b""
        declared = -1
        connection_tokens: list[bytes] = []
        forward: list[bytes] = []
        for name, value in headers:
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
        # A unique id, not a secret: no system call (os.urandom) or uuid4 (~7x slower) on every request.
        self.rid = rid or b"%032x" % getrandbits(128)
        self.authorization = authorization
        self.duplicate_auth = duplicate_auth
        self.keyed = keyed
        self.chunked = chunked
        self.forwarded_for = forwarded_for
        self.declared = declared
        self.connection_tokens = connection_tokens
        self.forward = forward

    def build_upstream_head(self, prefix: bytes) -> None:
        """The request line and headers a replica gets (all but its Host line, the same on a retry).

        `prefix` is the service's `/api/<service>` as the client sent it, cut from the path.
        """
        forward = self.forward
        keyed = self.keyed
        connection_tokens = self.connection_tokens
        if connection_tokens:
            forward = [h for h in forward if h.split(b":", 1)[0] not in connection_tokens]
            # A key the client listed in Connection is not forwarded: such a POST is not safe to resend.
            keyed = keyed and b"idempotency-key" not in connection_tokens
        scope = self.scope
        raw_path: bytes = scope.get("raw_path") or b""
        target = raw_path[len(prefix) :] if raw_path.startswith(prefix) else quote(self.rest).encode()
        if not target:
            target = b"/"
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        forward.append(b"x-request-id: " + self.rid)
        if self.traceparent:
            forward.append(b"traceparent: " + self.traceparent)
        forwarded_for = self.forwarded_for
        forward.append(
            b"x-forwarded-for: " + (forwarded_for + b", " if forwarded_for else b"") + self.client_ip.encode()
        )
        principal = self.principal
        if principal is not None:
            forward.append(b"x-user-id: " + principal.user_id.encode())
            forward.append(_roles_header(principal.roles))
        method = self.method
        if self.body or method in BODY_METHODS:
            forward.append(b"content-length: %d" % len(self.body))
        self.request_line = method.encode() + b" " + target + b" HTTP/1.1\r\nhost: "
        self.tail = b"\r\n" + b"\r\n".join(forward) + b"\r\n\r\n"
        self.retryable = keyed or method in RETRYABLE_METHODS

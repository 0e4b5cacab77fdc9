"""A minimal HTTP/1.1 client for upstream replicas: pooled keep-alive connections, httptools parsing.

Why not httpx or aiohttp: on this path the gateway's own CPU per request competes with the services for
the same cores. httpx costs several hundred microseconds per proxied request; this client is an asyncio
Protocol that writes one buffer and parses the answer with the C parser uvicorn already uses, with no
task per request (docs/adr/0003-gateway.md has the measurements).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools


class UpstreamError(Exception):
    """The exchange with a replica failed before a complete answer arrived."""

    kind = "error"


class UpstreamConnectError(UpstreamError):
    """The replica refused or did not accept the connection: nothing was sent."""

    kind = "connect"


class UpstreamClosed(UpstreamError):
    """The connection broke after the request was (maybe) sent."""

    kind = "closed"


class UpstreamTimeout(UpstreamError):
    """No complete answer within the route's timeout."""

    kind = "timeout"


class UpstreamResponse:
    """A complete upstream answer: status, headers (lower-case names) and the body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.waiter: asyncio.Future[UpstreamResponse] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.keep_alive = True
        self.head = False
        self.framed = False  # Content-Length or chunked: the parser knows where the answer ends
        self.idle_since = 0.0
        # The loop it was opened in, kept: on Python 3.11 each lookup of the running loop is a getpid() call.
        self.loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the pending request, or finish an answer that was delimited by the close."""
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.status and not self.framed:
            self.keep_alive = False
            self._finish()
        else:
            waiter.set_exception(UpstreamClosed("connection closed by the upstream"))

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a malformed answer, or bytes nobody asked for, break the connection."""
        if self.waiter is None:
            # Nothing was asked on this idle connection: never let such bytes run into the next answer.
            self.abort(UpstreamClosed("unexpected bytes on an idle connection"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.abort(UpstreamClosed(f"malformed upstream answer: {exc}"))

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect one header."""
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Status line and headers are in; a HEAD answer ends here."""
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.head:
            # The parser would wait for the body a HEAD answer announces but never sends.
            self.keep_alive = False
            self._finish()

    def on_body(self, body: bytes) -> None:
        """Collect a piece of the body."""
        self.body.append(body)

    def on_message_complete(self) -> None:
        """The answer is complete."""
        self._finish()

    def _finish(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            waiter.set_result(UpstreamResponse(self.status, self.headers, body))

    def abort(self, exc: UpstreamError) -> None:
        """Fail the pending request and drop the connection."""
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def expire(self, seconds: float) -> None:
        """The answer did not come within `seconds`: fail the request and drop the connection."""
        self.abort(UpstreamTimeout(f"no answer within {seconds}s"))

    def send(self, data: bytes, head: bool, loop: asyncio.AbstractEventLoop) -> asyncio.Future[UpstreamResponse]:
        """Write one request; the future completes with the answer."""
        self.status = 0
        self.headers = []
        self.body = []
        self.framed = False
        self.head = head
        self.waiter = waiter = loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        return waiter


# Idle pooled connections older than this are not reused: below uvicorn's 5 s keep-alive timeout.
MAX_IDLE_SECONDS = 4.0


class ReplicaClient:
    """Keep-alive connections to one replica's base URL."""

    def __init__(self, base_url: str, *, connect_timeout: float, max_idle: int) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream URL must be http://host:port, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.host_header = parts.netloc.encode("latin-1")
        self.base_path = parts.path.rstrip("/").encode("latin-1")
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle: deque[_Connection] = deque()

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _transport, conn = await loop.create_connection(_Connection, self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectError(f"connect to {self.host}:{self.port} failed: {type(exc).__name__}") from None
        conn.loop = loop
        return conn

    async def request(
        self, head_bytes: bytes, body: bytes, *, answer_within: float, head: bool = False
    ) -> UpstreamResponse:
        """Send one request (`head_bytes` is the request line and headers) and return the complete answer."""
        conn = None
        idle = self.idle
        loop = idle[-1].loop if idle else None
        if loop is None:
            loop = asyncio.get_running_loop()
        now = loop.time()
        while idle:
            candidate = idle.pop()  # the most recently used connection is the least likely to be stale
            if candidate.closed:
                continue
            if now - candidate.idle_since > MAX_IDLE_SECONDS:
                # The replica may be closing it (uvicorn drops idle connections after 5 s): a request sent on
                # it could fail with nothing to tell whether it was acted on.
                candidate.abort(UpstreamClosed("idle too long"))
                continue
            conn = candidate
            break
        if conn is None:
            conn = await self._connect(loop)
        waiter = conn.send(head_bytes + body if body else head_bytes, head, loop)
        # A timer handle instead of asyncio.wait_for: no task and no cancellation scope per request.
        timer = loop.call_later(answer_within, conn.expire, answer_within)
        try:
            response = await waiter
        except BaseException as exc:
            # Timed out, broken, or the client went away (cancelled): the connection is in an unknown state.
            if not isinstance(exc, UpstreamError):
                conn.abort(UpstreamClosed("request abandoned"))
            raise
        finally:
            timer.cancel()
        if conn.keep_alive and not conn.closed and len(idle) < self.max_idle:
            conn.waiter = None
            conn.idle_since = loop.time()
            idle.append(conn)
        elif not conn.closed:
            conn.closed = True
            assert conn.transport is not None
            conn.transport.close()
        return response

    def close(self) -> None:
        """Close every idle connection."""
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None:
                conn.transport.close()

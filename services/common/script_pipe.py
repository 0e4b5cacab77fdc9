"""One Lua script run over one pipelined Redis connection (RESP parsed by hiredis, in C).

The hot paths of the platform each run one script per request: flashsale's purchase decision and the
gateway's rate limits. redis-py's asyncio client pays for a pool checkout, a timeout scope per reply and
command packing in Python on every call: measured under load it cost flashsale ~40 us per purchase at the
batch sizes a crowd makes, and the gateway more CPU per request than everything else it does. Here every
call made in one event-loop iteration leaves in one write (pipelining), hiredis parses the answers, and each
answer resolves the oldest waiting call: a FIFO of futures over one connection, ~10 us per call.

Failures: a call that gets no answer within `call_timeout` fails the connection, and every call waiting on
it, with ScriptPipeError (a redis ConnectionError, so callers handle it like any Redis outage); the next
call reconnects. An error reply raises ScriptReplyError (a redis ResponseError). A Redis that lost its
scripts (restart, SCRIPT FLUSH) gets the script loaded again and the call is sent once more.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


class ScriptPipeError(RedisConnectionError):
    """Redis did not answer the call (down, slow, or the connection broke)."""


class ScriptReplyError(ResponseError):
    """Redis answered the call with an error."""


class ReplicaWaitTimeout(ScriptPipeError):
    """The script ran, but fewer replicas than asked confirmed its writes in time: its outcome is unknown (the
    write may be lost with its master), so the caller answers as for a call that got no answer."""


class _RespConnection(asyncio.Protocol):
    def __init__(self, encoding: str | None) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(encoding=encoding) if encoding else hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.closed = False
        self.outgoing: list[bytes] = []
        # The loop it was opened in, kept: on Python 3.11 each lookup of the running loop is a getpid() call.
        self.loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError:
                self.fail(ScriptPipeError("protocol error"))
                return
            if reply is False:
                return
            if not waiting:
                continue
            future = waiting.popleft()
            if not future.done():  # a caller that gave up (cancelled) no longer waits
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(ScriptReplyError(str(reply)))
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ScriptPipeError("connection lost"))

    def queue(self, command: bytes) -> asyncio.Future[Any]:
        """Queue a packed command; everything queued in one loop iteration leaves in one write."""
        loop = self.loop
        assert loop is not None
        future: asyncio.Future[Any] = loop.create_future()
        self.waiting.append(future)
        if not self.outgoing:
            loop.call_soon(self.flush)
        self.outgoing.append(command)
        return future

    def flush(self) -> None:
        """Write what was queued (one syscall for the calls of a whole loop iteration)."""
        outgoing, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.closed:
            self.transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def fail(self, exc: ScriptPipeError) -> None:
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class _ReplicatedRespConnection(_RespConnection):
    """A connection whose script calls are answered only once `replicas` replicas have their writes.

    Each loop iteration's calls leave in one write followed by `WAIT replicas timeout_ms`; their replies are
    held until WAIT answers. Fewer replicas than asked: every call of the batch fails with ReplicaWaitTimeout
    (a script error is passed on as it is: a script that failed wrote nothing to wait for).
    """

    def __init__(self, encoding: str | None, replicas: int, timeout_ms: int) -> None:
        super().__init__(encoding)
        self.replicas = replicas
        self.wait_command = _pack("WAIT", replicas, timeout_ms)
        self.batch: list[tuple[asyncio.Future[Any], asyncio.Future[Any]]] = []

    def queue_replicated(self, command: bytes) -> asyncio.Future[Any]:
        """Queue a script call answered once its batch's writes reached the replicas."""
        loop = self.loop
        assert loop is not None
        answer: asyncio.Future[Any] = loop.create_future()
        self.batch.append((self.queue(command), answer))
        return answer

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if batch:
            barrier = self.queue(self.wait_command)  # leaves in this same write, after the batch's calls
            barrier.add_done_callback(lambda done: self._release(batch, done))
        super().flush()

    def _release(self, batch: list[tuple[asyncio.Future[Any], asyncio.Future[Any]]], done: asyncio.Future[Any]) -> None:
        failure: BaseException | None = done.exception() if not done.cancelled() else ScriptPipeError("cancelled")
        if failure is None and int(done.result()) < self.replicas:
            failure = ReplicaWaitTimeout(f"{done.result()} of {self.replicas} replicas confirmed the writes in time")
        for reply, answer in batch:
            own = reply.exception() if reply.done() and not reply.cancelled() else None
            if answer.done():
                continue
            if isinstance(own, ScriptReplyError):
                answer.set_exception(own)
            elif failure is not None:
                answer.set_exception(failure)
            elif own is not None:
                answer.set_exception(own)
            else:
                answer.set_result(reply.result())


class ScriptPipe:
    """Runs one Lua script by SHA over a single pipelined connection, reconnecting on demand."""

    def __init__(
        self,
        url: str,
        script: str,
        *,
        call_timeout: float,
        connect_timeout: float,
        decode: bool = False,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 0,
    ) -> None:
        self.url = url
        # With wait_replicas, a call is answered only once that many replicas have its writes (WAIT per batch).
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        # Read the way redis-py reads it, so the pipe reaches the same server and database as the service's
        # other Redis calls; options the pipe cannot honour are refused at start-up, not ignored.
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        connection_class = options.pop("connection_class", None)
        self.tls: ssl.SSLContext | None = None
        if connection_class is SSLConnection:
            self.tls = _tls_context(options.pop("ssl_cert_reqs", "required"), options.pop("ssl_ca_certs", None))
        self.path: str | None = options.pop("path", None)
        self.host = str(options.pop("host", None) or "127.0.0.1")
        self.port = int(options.pop("port", None) or 6379)
        self.db = int(options.pop("db", None) or 0)
        self.username: str | None = options.pop("username", None)
        self.password: str | None = options.pop("password", None)
        if options:
            raise ValueError(f"REDIS_URL options {sorted(options)} are not supported by the script pipe")
        self.script = script.encode()
        self.sha = hashlib.sha1(self.script).hexdigest().encode()  # Redis names scripts by SHA-1
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self.encoding = "utf-8" if decode else None
        self.conn: _RespConnection | None = None
        self.connecting: asyncio.Future[_RespConnection] | None = None

    def _protocol(self) -> _RespConnection:
        if self.wait_replicas:
            return _ReplicatedRespConnection(self.encoding, self.wait_replicas, self.wait_timeout_ms)
        return _RespConnection(self.encoding)

    async def _connect(self) -> _RespConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            if self.path is not None:
                _t, conn = await loop.create_unix_connection(self._protocol, self.path)
            else:
                _t, conn = await loop.create_connection(self._protocol, self.host, self.port, ssl=self.tls)
            conn.loop = loop
            # Set-up commands go first on the pipe; their answers are awaited like any other.
            setup: list[tuple[Any, ...]] = []
            if self.password is not None:
                setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
            if self.db:
                setup.append(("SELECT", self.db))
            setup.append(("SCRIPT", "LOAD", self.script))
            try:
                await asyncio.gather(*[conn.queue(_pack(*command)) for command in setup])
            except BaseException:
                conn.fail(ScriptPipeError("set-up failed"))
                raise
        return conn

    async def _connection(self) -> _RespConnection:
        conn = self.conn
        if conn is not None and not conn.closed:
            return conn
        # One connect at a time: concurrent callers wait for the same one. Its outcome is taken by a callback,
        # not by the callers, so a caller cancelled meanwhile neither loses the connection nor starts another.
        connecting = self.connecting
        if connecting is None:
            connecting = self.connecting = asyncio.ensure_future(self._connect())
            connecting.add_done_callback(self._connected)
        try:
            return await asyncio.shield(connecting)
        except (OSError, TimeoutError, ResponseError) as exc:
            raise ScriptPipeError(f"connect failed: {type(exc).__name__}: {exc}") from None

    def _connected(self, connecting: asyncio.Future[_RespConnection]) -> None:
        if self.connecting is connecting:
            self.connecting = None
        if not connecting.cancelled() and connecting.exception() is None:
            self.conn = connecting.result()

    async def evalsha(self, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        """Run the script with `keys` and `args` and return its answer.

        Raises ScriptPipeError when Redis does not answer in time, ScriptReplyError for an error reply.
        """
        try:
            return await self._call(keys, args)
        except ScriptReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # Redis lost its scripts (restarted, or SCRIPT FLUSH): load it again, then send the call once more.
        await self.command("SCRIPT", "LOAD", self.script)
        return await self._call(keys, args)

    async def evalsha_asking(self, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        """Run the script on a cluster node that is importing the keys' slot (after an ASK redirect)."""
        try:
            return await self._call_asking(keys, args)
        except ScriptReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.command("SCRIPT", "LOAD", self.script)
        return await self._call_asking(keys, args)

    async def _call_asking(self, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        # ASKING lets the node serve the one command after it, so both leave in the same write.
        conn = await self._connection()
        asking = conn.queue(_pack("ASKING"))
        call = self._queue_call(conn, keys, args)
        await self._await(conn, asking)
        return await self._await(conn, call)

    async def command(self, *parts: str | int | bytes) -> Any:
        """Send one other command over the pipe (a script load, a cluster query) and return its answer."""
        conn = await self._connection()
        return await self._await(conn, conn.queue(_pack(*parts)))

    async def _call(self, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        conn = self.conn
        if conn is None or conn.closed:
            conn = await self._connection()
        return await self._await(conn, self._queue_call(conn, keys, args))

    def _queue_call(
        self, conn: _RespConnection, keys: Sequence[str], args: Sequence[str | int | float]
    ) -> asyncio.Future[Any]:
        command = _pack("EVALSHA", self.sha, len(keys), *keys, *args)
        if isinstance(conn, _ReplicatedRespConnection):
            return conn.queue_replicated(command)
        return conn.queue(command)

    async def _await(self, conn: _RespConnection, future: asyncio.Future[Any]) -> Any:
        assert conn.loop is not None
        timer = conn.loop.call_later(self.call_timeout, _expire, future, conn)
        try:
            return await future
        finally:
            timer.cancel()

    def at(self, host: str, port: int) -> ScriptPipe:
        """The same script, credentials and timeouts on another server (a node of the same cluster)."""
        pipe = copy.copy(self)
        pipe.host, pipe.port, pipe.path = host, port, None
        pipe.conn = pipe.connecting = None
        return pipe

    async def aclose(self) -> None:
        """Close the connection."""
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()
        self.conn = None


def _tls_context(cert_reqs: str, ca_certs: str | None) -> ssl.SSLContext:
    """TLS as redis-py sets it up from `ssl_cert_reqs` / `ssl_ca_certs` (verified by default)."""
    tls = ssl.create_default_context(cafile=ca_certs)
    if cert_reqs in ("none", "optional"):
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE if cert_reqs == "none" else ssl.CERT_OPTIONAL
    elif cert_reqs != "required":
        raise ValueError(f"ssl_cert_reqs={cert_reqs!r} is not one of none, optional, required")
    return tls


def _pack(*parts: Any) -> bytes:
    """One command in RESP (hiredis's type hints take a tuple of one part only)."""
    packed: bytes = hiredis.pack_command(parts)
    return packed


def _expire(future: asyncio.Future[Any], conn: _RespConnection) -> None:
    # A Redis that stops answering must not pile up callers on a connection: drop it, reconnect later.
    if not future.done():
        conn.fail(ScriptPipeError("no answer in time"))

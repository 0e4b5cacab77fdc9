"""uvicorn's httptools protocol with one send() per response, for every service and the gateway:
`uvicorn <app> --http services.common.server:CoalescingHttpProtocol`.

uvicorn writes a response's status line and headers, then its body, as two transport writes, and each is a
send() system call (two TCP segments over loopback). Measured with py-spy under load, those calls were a
fifth of the gateway's CPU per request, and moving flashsale's purchases onto this protocol raised them
from ~7,500/s to ~9,500/s on the 2-core benchmark machine (loadtest/bench/gateway.py, direct path). Here the
writes made during one event-loop iteration are joined and sent once at the end of it; a response's head
and body are written in the same iteration, so each answer leaves in one send(). Everything else is
uvicorn's, unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport whose writes within one loop iteration go out as one write of the real transport."""

    __slots__ = ("_buffer", "_buffered", "_loop", "_scheduled", "_transport")

    # Past this many bytes queued in one iteration, write at once: a large or fast-streamed body goes to the
    # real transport, whose buffer uvicorn's flow control (pause_writing) watches.
    MAX_BUFFERED = 64 * 1024

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue `data`; it is sent with everything else written in this loop iteration."""
        if not data:
            return
        self._buffer.append(bytes(data))
        self._buffered += len(data)
        if self._buffered > self.MAX_BUFFERED:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send what is queued, in one write."""
        self._scheduled = False
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        """Send what is queued, then close."""
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        """Bytes not sent yet, queued here or in the real transport (uvicorn's flow control reads it)."""
        return self._buffered + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        # Everything else (pause/resume reading, get_extra_info, is_closing, abort, ...) is the real transport's.
        return getattr(self._transport, name)


class CoalescingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a CoalescingTransport."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Wrap the connection's transport, then let uvicorn set the connection up as usual."""
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

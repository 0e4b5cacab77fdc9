"""An OTLP/HTTP receiver that accepts every export and discards it: `uvicorn loadtest.bench.otlp_sink:app`.

The traces benchmark points the services' exporter here, so the export itself (encoding, the HTTP call) is
paid as in production while nothing downstream is measured. `GET /stats` tells how many export calls and
bytes arrived, so a run can show that spans really were exported.
"""

from __future__ import annotations

from typing import Any

import orjson

# An empty ExportTraceServiceResponse: no partial_success field set encodes as zero bytes.
ACCEPTED = [(b"content-type", b"application/x-protobuf"), (b"content-length", b"0")]


class Sink:
    """Counts OTLP export calls and their bytes; answers each with an empty success response."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one ASGI call (lifespan is not used)."""
        if scope["type"] != "http":
            return
        size = 0
        more = True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        if scope["method"] == "GET" and scope["path"] == "/stats":
            body = orjson.dumps({"exports": self.exports, "bytes": self.bytes})
            headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.exports += 1
        self.bytes += size
        await send({"type": "http.response.start", "status": 200, "headers": ACCEPTED})
        await send({"type": "http.response.body", "body": b""})


app = Sink()

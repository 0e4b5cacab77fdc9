"""A small ASGI app for the tests of services.common.server: plain, streamed, large and slow answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

app = FastAPI()


@app.get("/hello")
async def hello() -> PlainTextResponse:
    """A small answer."""
    return PlainTextResponse("hello")


@app.post("/echo")
async def echo(request: Request) -> PlainTextResponse:
    """The request body back."""
    return PlainTextResponse((await request.body()).decode())


@app.get("/big")
async def big() -> PlainTextResponse:
    """A 1 MiB answer (more than one socket buffer)."""
    return PlainTextResponse("x" * (1 << 20))


@app.get("/stream")
async def stream() -> StreamingResponse:
    """An answer in chunks written across several loop iterations (chunked encoding)."""

    async def parts() -> AsyncIterator[bytes]:
        for n in range(3):
            await asyncio.sleep(0.01)
            yield f"part{n};".encode()

    return StreamingResponse(parts(), media_type="text/plain")

"""The naive baseline of the performance table: a purchase that takes stock with a PostgreSQL row lock, as many
shops do. `uvicorn loadtest.rowlock_app:app` with ROWLOCK_DATABASE_URL (a database it owns).

    POST /sales/{id}/purchase  {"quantity": n} + bearer token + Idempotency-Key
    -> one transaction: UPDATE stock SET stock = stock - n WHERE sale_id = $1 AND stock >= n (the row lock every
       buyer of the sale queues on), INSERT the reservation (the key unique: a replay finds the first answer)
    -> 202 {reservation_id} or 409 SOLD_OUT
    GET /healthz/live, /healthz/ready

The same token check and JSON as flashsale's purchase, so the table compares the stock decision, not the framework.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.common.auth import TokenVerifier, Unauthenticated
from services.common.config import BaseServiceSettings

SCHEMA = """
CREATE TABLE IF NOT EXISTS rowlock_stock (sale_id bigint PRIMARY KEY, stock bigint NOT NULL);
CREATE TABLE IF NOT EXISTS rowlock_reservations (
  id text PRIMARY KEY, sale_id bigint NOT NULL, user_id text NOT NULL, quantity int NOT NULL,
  idempotency_key text NOT NULL, UNIQUE (user_id, idempotency_key));
"""
TAKE = "UPDATE rowlock_stock SET stock = stock - $2 WHERE sale_id = $1 AND stock >= $2 RETURNING stock"
RECORD = (
    "INSERT INTO rowlock_reservations VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, idempotency_key) DO NOTHING"
)
POOL_SIZE = 20
JSON = "application/json"


def _problem(status: int, code: str) -> Response:
    return Response(orjson.dumps({"status": status, "code": code}), status_code=status, media_type=JSON)


async def purchase(request: Request) -> Response:
    """Take the units under the sale's row lock and record the reservation, in one transaction."""
    verifier: TokenVerifier = request.app.state.verifier
    _scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    key = request.headers.get("idempotency-key")
    try:
        user = verifier.verify(token.strip())
    except Unauthenticated:
        return _problem(401, "UNAUTHENTICATED")
    if not key:
        return _problem(400, "IDEMPOTENCY_KEY_REQUIRED")
    quantity = int(orjson.loads(await request.body())["quantity"])
    sale_id = int(request.path_params["sale_id"])
    rid = uuid.uuid4().hex
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(TAKE, sale_id, quantity) is None:
            return _problem(409, "SOLD_OUT")
        status = await conn.execute(RECORD, rid, sale_id, user.user_id, quantity, key)
        if status.endswith(" 0"):  # a replayed key: give the units back, answer with the first reservation
            raise _Replay(
                await conn.fetchval(
                    "SELECT id FROM rowlock_reservations WHERE user_id = $1 AND idempotency_key = $2", user.user_id, key
                )
            )
    answer = {"reservation_id": rid, "sale_id": sale_id, "quantity": quantity, "status": "reserved"}
    return Response(orjson.dumps(answer), status_code=202, media_type=JSON)


class _Replay(Exception):
    """Rolls the transaction back (the units return) and carries the first answer's reservation id."""

    def __init__(self, reservation_id: Any) -> None:
        super().__init__(reservation_id)
        self.reservation_id = str(reservation_id)


async def purchase_route(request: Request) -> Response:
    """The purchase, with a replayed Idempotency-Key answered like the first time."""
    try:
        return await purchase(request)
    except _Replay as replay:
        body = {"reservation_id": replay.reservation_id, "status": "reserved"}
        return Response(orjson.dumps(body), status_code=202, media_type=JSON)


async def healthz(_request: Request) -> Response:
    """Liveness and readiness."""
    return Response(b'{"status":"ok"}', media_type=JSON)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """One pool per process; the tables made once."""
    dsn = os.environ["ROWLOCK_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    app.state.pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    app.state.verifier = TokenVerifier(BaseServiceSettings())
    yield
    await app.state.pool.close()


app = Starlette(
    routes=[
        Route("/sales/{sale_id:int}/purchase", purchase_route, methods=["POST"]),
        Route("/healthz/live", healthz),
        Route("/healthz/ready", healthz),
    ],
    lifespan=lifespan,
)

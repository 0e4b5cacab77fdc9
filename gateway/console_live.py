"""The console's push channel: `GET /console/live?sale_id=N&ticket=T` streams a sale's live numbers as
server-sent events, one connection per console, fed by the sale's one collector (gateway/console_collector.py).

EventSource cannot send an Authorization header, and a bearer token in a URL lands in access logs. So the
console first asks `POST /console/live/tickets` with its admin bearer token for a ticket: signed by the
gateway (HMAC over sale, admin and expiry), valid for one sale, for `ticket_seconds`, and once per process.
A ticket in a log is worth one stream of one sale's numbers for a few seconds, never an admin token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import signal
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.responses import StreamingResponse

from gateway.config import GatewaySettings
from gateway.console_collector import CLOSE, LiveHub, LiveSources, Upstreams
from gateway.pools import Pool
from services.common.auth import AdminUser, ServiceToken
from services.common.errors import ProblemError
from services.common.lifespan import ServiceRuntime
from services.common.openapi import problems
from services.common.resources import RedisClient, open_redis

log = logging.getLogger("gateway.console_live")

SALE_ID_MAX = 2**62


class ConsoleLiveSettings(BaseSettings):
    """The live channel's knobs, from GATEWAY_CONSOLE_LIVE_* variables."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_CONSOLE_LIVE_", extra="ignore")

    # One snapshot per sale this often (seconds); the page promises at least one a second.
    interval_seconds: float = Field(1.0, gt=0, le=1.0)
    # Open live connections per gateway process; one more is answered 503.
    max_connections: int = Field(50, ge=1)
    ticket_seconds: float = Field(30.0, gt=0, le=300)
    # A comment line this often when no snapshot went out, so proxies keep the stream open.
    heartbeat_seconds: float = Field(15.0, gt=0)
    # Reconnection delay the browser is told (`retry:`), in milliseconds.
    retry_ms: int = Field(3000, ge=100)
    upstream_timeout_seconds: float = Field(2.0, gt=0)
    # The bearer token the collectors show the services; empty: an HS256 token minted from JWT_SECRET.
    service_token: str = ""
    # The Redis holding the alerts stream (the services'); empty: the gateway's own REDIS_URL.
    alerts_redis_url: str = ""
    # The key tickets are signed with, the same in every gateway process; empty: derived from JWT_SECRET.
    ticket_secret: str = ""


RETRY_LATER = {"Retry-After": "5"}


class TicketRefused(ProblemError):
    status = 401
    code = "UNAUTHENTICATED"
    title = "No valid live ticket"


class LiveFull(ProblemError):
    status = 503
    code = "OVERLOADED"
    title = "Too many live connections"


class TicketIn(BaseModel):
    """Which sale the ticket is for."""

    sale_id: int = Field(ge=1, le=SALE_ID_MAX)


class TicketOut(BaseModel):
    """A ticket for one live stream of one sale."""

    ticket: str
    sale_id: int
    expires_in: float
    url: str


class Tickets:
    """Signed, short-lived, single-use tickets for the live stream."""

    def __init__(self, secret: str, seconds: float) -> None:
        self.key = hashlib.sha256(b"console live ticket\0" + secret.encode()).digest()
        self.seconds = seconds
        self.used: dict[str, float] = {}

    def issue(self, sale_id: int, user_id: str) -> str:
        """A ticket for `user_id` to watch `sale_id`."""
        body = f"{sale_id}.{time.time() + self.seconds:.3f}.{user_id}".encode()
        return _b64(body) + "." + _b64(hmac.digest(self.key, body, "sha256"))

    def redeem(self, ticket: str, sale_id: int) -> str:
        """The admin the ticket was issued to (raises TicketRefused: forged, expired, other sale, used)."""
        now = time.time()
        try:
            encoded, _, signature = ticket.partition(".")
            body = _unb64(encoded)
            valid = hmac.compare_digest(_unb64(signature), hmac.digest(self.key, body, "sha256"))
            for_sale, expires, user_id = body.decode().split(".", 2)
        except ValueError:
            raise TicketRefused("The live ticket is malformed") from None
        if not valid:
            raise TicketRefused("The live ticket is not one this gateway issued")
        if float(expires) < now:
            raise TicketRefused("The live ticket expired: ask for a new one")
        if int(for_sale) != sale_id:
            raise TicketRefused("The live ticket is for another sale")
        self.used = {t: exp for t, exp in self.used.items() if exp >= now}
        if ticket in self.used:
            raise TicketRefused("The live ticket was used already: ask for a new one")
        self.used[ticket] = float(expires)
        return user_id


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise ValueError("not base64") from None


def close_on_signals(hub: LiveHub) -> None:
    """End every stream when the server is told to stop: the server waits for open responses before it
    runs the shutdown, so streams that never end would hold it until it is killed."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(sig: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(hub.close)
            if callable(previous):
                previous(sig, frame)

        signal.signal(signum, handler)


async def event_stream(hub: LiveHub, sale_id: int, live: ConsoleLiveSettings) -> AsyncIterator[bytes]:
    """The SSE body: the retry hint, then one `snapshot` event per tick, heartbeats, and `close` at shutdown."""
    queue = hub.watch(sale_id)
    try:
        yield f"retry: {live.retry_ms}\n: live numbers of sale {sale_id}\n\n".encode()
        while True:
            try:
                snapshot = await asyncio.wait_for(queue.get(), live.heartbeat_seconds)
            except TimeoutError:
                yield b": heartbeat\n\n"
                continue
            if snapshot is CLOSE:
                yield b"event: close\ndata: {}\n\n"
                return
            yield b"event: snapshot\ndata: " + snapshot + b"\n\n"
    finally:
        hub.leave(sale_id, queue)


def start_live_hub(
    settings: GatewaySettings,
    live: ConsoleLiveSettings,
    runtime: ServiceRuntime,
    redis: RedisClient,
    pools: dict[str, Pool],
) -> LiveHub:
    """The process's hub of collectors, ended at shutdown (and on the stop signal, before the server waits)."""
    if live.alerts_redis_url:
        # The same kind of client as the services' (a cluster client on a Redis Cluster), with a few connections.
        update = {"redis_url": live.alerts_redis_url, "redis_max_connections": 4}
        redis = runtime.closing(open_redis(settings.model_copy(update=update)))
    token = ServiceToken(settings, "gateway-console", live.service_token)
    upstreams = Upstreams(pools, token, live.upstream_timeout_seconds)
    state = runtime.state
    sources = LiveSources(upstreams, redis, state.worker, pools, lambda: getattr(state, "view_publisher", None))
    hub = LiveHub(sources, interval=live.interval_seconds, max_connections=live.max_connections)
    state.live_hub = hub
    runtime.on_shutdown(hub.close)
    close_on_signals(hub)
    return hub


def live_router(settings: GatewaySettings, live: ConsoleLiveSettings) -> APIRouter:
    """The ticket and stream routes; the hub is found on `app.state.live_hub` (set in the lifespan)."""
    tickets = Tickets(live.ticket_secret or settings.jwt_secret, live.ticket_seconds)
    router = APIRouter(prefix="/console/live", tags=["console"])

    @router.post("/tickets", response_model=TicketOut, responses=problems(LiveFull))
    async def live_ticket(body: TicketIn, user: AdminUser, request: Request) -> TicketOut:
        """A short-lived ticket to open the live stream of one sale (EventSource cannot send a token)."""
        hub: LiveHub | None = getattr(request.app.state, "live_hub", None)
        if hub is None or hub.full():
            raise LiveFull("The gateway has no room for another live connection; retry shortly", headers=RETRY_LATER)
        ticket = tickets.issue(body.sale_id, user.user_id)
        log.info("live ticket issued", extra={"actor": user.user_id, "sale_id": body.sale_id})
        url = f"/console/live?sale_id={body.sale_id}&ticket={ticket}"
        return TicketOut(ticket=ticket, sale_id=body.sale_id, expires_in=live.ticket_seconds, url=url)

    @router.get("", include_in_schema=False)
    async def live_stream(
        request: Request,
        sale_id: Annotated[int, Query(ge=1, le=SALE_ID_MAX)],
        ticket: Annotated[str, Query(min_length=1, max_length=512)],
    ) -> StreamingResponse:
        hub: LiveHub | None = getattr(request.app.state, "live_hub", None)
        user_id = tickets.redeem(ticket, sale_id)
        if hub is None or hub.full():
            raise LiveFull("The gateway has no room for another live connection; retry shortly", headers=RETRY_LATER)
        log.info("live stream opened", extra={"actor": user_id, "sale_id": sale_id})
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(event_stream(hub, sale_id, live), media_type="text/event-stream", headers=headers)

    return router

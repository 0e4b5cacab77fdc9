"""Flashsale's stream work: relaying stock alerts (stream, webhooks, metric), consuming order events,
and listening for sold-out / catalog notifications from other replicas."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from prometheus_client import Counter
from redis.exceptions import RedisError

from services.common.contracts import ConsumerGroup, EventType, decode_event, encode_event, sale_alert_stream
from services.common.streams import StreamConsumer
from services.common.webhooks import sign
from services.flashsale import errors
from services.flashsale.core import WARM_STATES, utcnow
from services.flashsale.schemas import SaleAlert
from services.flashsale.service import FlashSaleService
from services.flashsale.store import NOTIFY_CHANNEL, alert_relayed_key

log = logging.getLogger("flashsale.events")

ALERTS = Counter("flashsale_stock_alerts_total", "Stock alerts raised", ["type"])
WEBHOOKS = Counter("flashsale_webhook_deliveries_total", "Alert webhook deliveries", ["outcome"])


class WebhookNotifier:
    """POSTs each alert to every configured URL, retrying with backoff, off the purchase path."""

    def __init__(self, urls: list[str], signing_key: str, max_attempts: int) -> None:
        self.urls = urls
        self.key = signing_key.encode()
        self.max_attempts = max_attempts
        self.client = httpx.AsyncClient(timeout=5.0)
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, payload: dict[str, Any]) -> None:
        """Queue one delivery per URL; returns at once."""
        body = orjson.dumps(payload)
        for url in self.urls:
            task = asyncio.create_task(self._deliver(url, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, body: bytes) -> None:
        headers = sign(body, self.key)
        for attempt in range(self.max_attempts):
            try:
                resp = await self.client.post(url, content=body, headers=headers)
                if resp.status_code < 300:
                    WEBHOOKS.labels("delivered").inc()
                    return
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                    break  # the receiver rejects it; retrying would not help
            except httpx.HTTPError:
                pass
            WEBHOOKS.labels("retry").inc()
            await asyncio.sleep(min(30.0, 0.25 * 2**attempt))
        WEBHOOKS.labels("failed").inc()
        log.error("alert webhook %s gave up after %d attempts", url, self.max_attempts)

    async def drain(self) -> None:
        """Wait for deliveries in flight (tests and shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def aclose(self) -> None:
        """Stop pending deliveries and close the client."""
        for task in list(self._tasks):
            task.cancel()
        await self.client.aclose()


class AlertRelay:
    """One consumer per active sale's alert stream; each alert goes out exactly once per crossing."""

    GROUP = ConsumerGroup.FLASHSALE_ALERTS

    def __init__(self, service: FlashSaleService, notifier: WebhookNotifier, consumer_name: str) -> None:
        self.service = service
        self.notifier = notifier
        self.consumer_name = consumer_name
        self._consumers: dict[int, tuple[StreamConsumer, asyncio.Task[None]]] = {}

    def _wanted(self) -> set[int]:
        recent = utcnow() - timedelta(hours=1)
        return {
            e.id
            for e in self.service.core.catalog.values()
            if e.state in WARM_STATES or (e.ends_at >= recent and e.state.value == "ended")
        }

    def sync(self) -> None:
        """Start consumers for sales that became active and stop those no longer needed."""
        wanted = self._wanted()
        for sale_id in wanted - self._consumers.keys():
            consumer = StreamConsumer(
                redis=self.service.core.redis,
                stream=sale_alert_stream(sale_id),
                group=self.GROUP,
                consumer=self.consumer_name,
                handler=self._handler(sale_id),
                batch=50,
                block_ms=500,
                claim_idle_ms=10_000,
            )
            self._consumers[sale_id] = (consumer, asyncio.create_task(consumer.run()))
        for sale_id in self._consumers.keys() - wanted:
            consumer, task = self._consumers.pop(sale_id)
            consumer.stop()
            task.cancel()

    def _handler(self, sale_id: int) -> Any:
        async def handle(entry_id: str, fields: dict[str, Any]) -> None:
            await self.relay(sale_id, entry_id, fields)

        return handle

    async def relay(self, sale_id: int, entry_id: str, fields: dict[str, Any]) -> None:
        """Publish one alert: global stream, metric, webhooks; pause the record if the script paused."""
        redis = self.service.core.redis
        event = decode_event(fields)
        event_type = EventType(event["type"])
        if event_type == EventType.STOCK_LOW and event.get("paused"):
            await self.service.automatic.sync_auto_pause(sale_id)  # safe to repeat; must not be skipped by a retry
        seen_key = alert_relayed_key(sale_id, entry_id)
        if await redis.exists(seen_key):
            return  # delivered before a crash stopped the acknowledgement
        payload = {"id": f"{sale_id}-{entry_id}", **event}
        entry: dict[Any, Any] = encode_event(event_type, payload, version=int(event["v"]))
        await redis.xadd(self.service.core.settings.alerts_stream, entry, maxlen=100_000, approximate=True)
        await redis.set(seen_key, "1", ex=7 * 24 * 3600)
        ALERTS.labels(event_type).inc()
        log.warning("stock alert %s for sale %s", event_type, sale_id, extra={"alert": payload})
        self.notifier.send(payload)

    async def aclose(self) -> None:
        """Stop every consumer."""
        for consumer, task in self._consumers.values():
            consumer.stop()
            task.cancel()
        self._consumers.clear()


async def sale_alerts(service: FlashSaleService, *, sale_id: int, after: str | None, limit: int) -> list[SaleAlert]:
    """A sale's alerts as raised, oldest first; each `id` is the one its webhook and `alerts` entry carry."""
    await service.sales.get_sale(sale_id)  # 404 for a sale that does not exist
    prefix = f"{sale_id}-"
    if after is not None and not after.startswith(prefix):
        raise errors.InvalidSale(f"after must be an alert id of sale {sale_id} ({prefix}<ms>-<seq>)")
    start = after[len(prefix) :] if after else None
    try:
        entries = await service.core.store.sale_alerts(sale_id, after=start, limit=limit)
    except RedisError:
        raise errors.StockUnavailable("The sale's alerts are unavailable right now") from None
    return [
        SaleAlert(
            id=f"{sale_id}-{entry_id}",
            type=fields.get("type", ""),
            at=datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC),
            data=decode_event(fields),
        )
        for entry_id, fields in entries
    ]


async def handle_order_event(service: FlashSaleService, entry_id: str, fields: dict[str, Any]) -> None:
    """Confirm or release the reservation an order event names; other events and repeats change nothing."""
    event = decode_event(fields)
    handler = ORDER_EVENT_HANDLERS.get(event.get("type", ""))
    if handler is None:
        return
    try:
        sale_id = int(event["sale_id"])
        reservation_id = str(event["reservation_id"])
    except (KeyError, TypeError, ValueError):
        log.error("order event %s without sale_id/reservation_id; skipped", entry_id)
        return
    await handler(service, sale_id, reservation_id)


async def on_order_paid(service: FlashSaleService, sale_id: int, reservation_id: str) -> None:
    """The reservation became a sale."""
    await service.purchases.confirm_reservation(sale_id=sale_id, reservation_id=reservation_id)


async def on_order_closed(service: FlashSaleService, sale_id: int, reservation_id: str) -> None:
    """The order will not be paid: its units and the buyer's count come back, once."""
    released = await service.purchases.release_reservation(sale_id=sale_id, reservation_id=reservation_id)
    log.info("release %s: %s", reservation_id, "released" if released else "already done")


ORDER_EVENT_HANDLERS: dict[str, Callable[[FlashSaleService, int, str], Awaitable[None]]] = {
    EventType.ORDER_PAID: on_order_paid,
    EventType.ORDER_CANCELLED: on_order_closed,
    EventType.ORDER_EXPIRED: on_order_closed,
    EventType.ORDER_FAILED: on_order_closed,
    EventType.RESERVATION_RELEASED: on_order_closed,
}


def order_events_consumer(service: FlashSaleService, consumer_name: str) -> StreamConsumer:
    """Reservations released or confirmed as their orders close or are paid (group `flashsale`)."""

    async def handle(entry_id: str, fields: dict[str, Any]) -> None:
        await handle_order_event(service, entry_id, fields)

    return StreamConsumer(
        redis=service.core.redis,
        stream=service.core.settings.order_events_stream,
        group=ConsumerGroup.FLASHSALE,
        consumer=consumer_name,
        handler=handle,
        claim_idle_ms=10_000,
    )


async def listen_notifications(service: FlashSaleService) -> None:
    """Follow other replicas: sold out, buyable again, catalog changed.

    A sharded channel: on a cluster only the master of its slot carries it (classic pub/sub is copied to
    every node), and on a single Redis it behaves as classic pub/sub.
    """
    while True:
        try:
            async with service.core.redis.pubsub() as pubsub:
                await pubsub.ssubscribe(NOTIFY_CHANNEL)
                while True:
                    message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "smessage":
                        await _on_notification(service, str(message["data"]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("notification channel lost (%s); reconnecting", type(exc).__name__)
            await asyncio.sleep(1)


async def _on_notification(service: FlashSaleService, data: str) -> None:
    kind, _, arg = data.partition(":")
    if kind == "soldout" and arg.isdigit():
        service.core.sold_out.mark(int(arg))
    elif kind == "buyable" and arg.isdigit():
        service.core.sold_out.clear(int(arg))
    elif kind == "catalog":
        try:
            await service.refresh_catalog()
        except Exception:
            log.warning("catalog refresh failed", exc_info=True)

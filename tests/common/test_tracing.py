"""One purchase is one trace: client -> gateway -> flashsale -> purchase event -> order creation -> charge.

The gateway, flashsale and order apps run in this process on real ports (real Redis, PostgreSQL and paysim
processes), so the SDK's in-memory exporter sees every span they make.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from services.common import tracing
from services.common.contracts import purchase_stream
from services.common.migrate import upgrade
from services.order.config import OrderSettings
from services.order.main import create_app as create_order_app
from tests.conftest import (
    TEST_REDIS_URL,
    PaySims,
    customer_headers,
    db_name_for,
    db_url_for,
    drop_database,
    free_port,
    live_sale,
)
from tests.gateway.conftest import Gateway, gateway_settings, serve, shutdown

ORDER_DB_URL = db_url_for("orders_traced")
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


async def _serve_running(app: Any) -> tuple[uvicorn.Server, str]:
    """Serve an app whose lifespan already runs (a fixture's) on a real port; the server and its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    server.task = asyncio.create_task(server.serve())  # type: ignore[attr-defined]
    while not server.started:
        await asyncio.sleep(0.01)
    return server, f"http://127.0.0.1:{port}"


@dataclass
class Stack:
    """The gateway's URL in front of in-process flashsale and order apps."""

    gateway: str


@pytest.fixture(scope="module")
def order_settings(database: str, paysim: PaySims) -> Iterator[OrderSettings]:
    """Order settings on a freshly migrated database of this module's own."""
    asyncio.run(drop_database(db_name_for("orders_traced")))
    upgrade("order", ORDER_DB_URL)
    yield OrderSettings(
        env="test",
        database_url=ORDER_DB_URL,
        redis_url=TEST_REDIS_URL,
        paysim_primary_url=paysim.primary,
        paysim_backup_url=paysim.backup,
        stream_discovery_seconds=0.2,
        replica_id="order-traced",
    )


@pytest.fixture(scope="module")
async def stack(app: FastAPI, order_settings: OrderSettings) -> AsyncIterator[Stack]:
    """Gateway -> flashsale (the shared in-process app) and order (this module's), all on real ports."""
    order_app = create_order_app(order_settings)
    async with order_app.router.lifespan_context(order_app):
        flashsale_server, flashsale_url = await _serve_running(app)
        order_server, order_url = await _serve_running(order_app)
        gateway = Gateway(gateway_settings(flashsale_urls=flashsale_url, order_urls=order_url))
        gateway.server = await serve(gateway.app, gateway.port)
        try:
            yield Stack(gateway.url)
        finally:
            for server in (gateway.server, order_server, flashsale_server):
                await shutdown(server)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Traces on (every trace sampled, as parentbased_traceidratio 1.0) into an in-memory exporter, for one test."""
    exporter = InMemorySpanExporter()
    provider = tracing.RatioSampledProvider(1.0)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


async def _buy_and_pay(stack: Stack, client: httpx.AsyncClient, user: str, headers: dict[str, str]) -> dict[str, Any]:
    """Buy one unit of a new sale through the gateway, wait for its order and pay it; the purchase event."""
    sale = await live_sale(client, quantity=5, per_user_limit=1)
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=15) as gw:
        bought = await gw.post(
            f"/api/flashsale/sales/{sale['id']}/purchase",
            json={"quantity": 1},
            headers={**customer_headers(user, f"{user}-buy"), **headers},
        )
        assert bought.status_code == 202, bought.text
        rid = bought.json()["reservation_id"]
        order = await gw.get(
            f"/api/order/orders/by-reservation/{rid}", params={"wait": 10}, headers=customer_headers(user)
        )
        assert order.status_code == 200, order.text
        paid = await gw.post(f"/api/order/orders/{order.json()['id']}/pay", headers=customer_headers(user, "pay"))
        assert paid.status_code == 200, paid.text
        assert paid.json()["state"] == "paid"
    redis = Redis.from_url(TEST_REDIS_URL)
    try:
        ((_id, fields),) = await redis.xrange(purchase_stream(sale["id"]))
    finally:
        await redis.aclose()
    event: dict[str, Any] = orjson.loads(fields[b"data"])
    return event


def _one(found: list[ReadableSpan], name: str) -> ReadableSpan:
    named = [s for s in found if s.name == name]
    assert len(named) == 1, [s.name for s in found]
    return named[0]


async def test_one_purchase_is_one_trace_from_the_gateway_to_the_charge(
    stack: Stack, client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    event = await _buy_and_pay(stack, client, "traced-buyer", {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})

    found = list(spans.get_finished_spans())
    gateway = _one(found, "gateway flashsale.purchase")
    purchase = _one(found, "flashsale purchase")
    created = _one(found, "order create")
    charge = _one(found, "order charge")
    chain = [gateway, purchase, created, charge]
    # One trace, the client's, and each hop the child of the one before it.
    assert {f"{s.context.trace_id:032x}" for s in chain} == {CLIENT_TRACE}
    assert gateway.parent is not None and f"{gateway.parent.span_id:016x}" == CLIENT_SPAN
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id, child.name
    # The context rode inside the purchase event.
    assert event["traceparent"] == f"00-{CLIENT_TRACE}-{purchase.context.span_id:016x}-01"
    assert charge.attributes is not None and charge.attributes["payment.outcome"] == "succeeded"
    # The order look-up and the pay request through the gateway are traces of their own; the charge the pay
    # makes joins the purchase's.
    own = [s for s in found if s.name == "gateway order"]
    assert len(own) == 2
    assert len({s.context.trace_id for s in own} | {gateway.context.trace_id}) == 3


async def test_with_tracing_off_no_span_is_made_and_the_event_has_no_traceparent(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    assert tracing.TRACER is None  # no OTEL_TRACES_EXPORTER in the test environment

    event = await _buy_and_pay(stack, client, "untraced-buyer", {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})

    # The client's traceparent is not carried into the event: with tracing off nothing reads it.
    assert "traceparent" not in event


async def test_an_unsampled_purchase_carries_its_flag_and_the_order_side_makes_no_span(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    exporter = InMemorySpanExporter()
    provider = tracing.RatioSampledProvider(0.0)  # parentbased_traceidratio 0: no root is sampled
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        event = await _buy_and_pay(stack, client, "unsampled-buyer", {})
    finally:
        tracing.use_provider(None)

    version, trace_id, span_id, flags = event["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 1 == 0  # the sampled bit (the SDK may set 02, "random trace id", beside it)
    assert int(trace_id, 16) and int(span_id, 16)
    assert exporter.get_finished_spans() == ()


def test_traces_are_on_only_when_an_exporter_is_named_and_the_sdk_is_not_disabled() -> None:
    assert not tracing.tracing_wanted({})
    assert not tracing.tracing_wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.tracing_wanted({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    assert tracing.tracing_wanted({"OTEL_TRACES_EXPORTER": "otlp"})


class OtlpReceiver:
    """A tiny OTLP/HTTP receiver that keeps every export request's body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"] == "/v1/traces":
            self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


async def test_the_otel_variables_turn_on_otlp_export_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = OtlpReceiver()
    server, url = await _serve_running(receiver)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{url}/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "flashsale-under-test")
    try:
        tracing.configure_tracing("flashsale")
        assert tracing.TRACER is not None and tracing.PROVIDER is not None
        tracing.TRACER.start_span("flashsale purchase").end()
        provider = tracing.PROVIDER
        assert await asyncio.to_thread(provider.force_flush, 10_000)
    finally:
        if tracing.PROVIDER is not None:
            await asyncio.to_thread(tracing.PROVIDER.shutdown)
        tracing.use_provider(None)
        await shutdown(server)

    (body,) = receiver.bodies
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
    assert service == "flashsale-under-test"
    assert [s.name for scope in resource_spans.scope_spans for s in scope.spans] == ["flashsale purchase"]


def test_a_root_decided_by_hand_is_the_one_the_sdk_samples() -> None:
    exporter = InMemorySpanExporter()
    provider = tracing.RatioSampledProvider(0.5)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    tracing.use_provider(provider)
    try:
        roots = [tracing.begin(tracer, "root", None, SpanKind.SERVER) for _ in range(400)]
    finally:
        tracing.use_provider(None)
    sampled = [(span, traceparent) for span, traceparent in roots if span is not None]
    for span, traceparent in sampled:
        assert span.is_recording()
        assert traceparent == tracing.traceparent_of(span)
        span.end()
    dropped = [traceparent for span, traceparent in roots if span is None]
    assert all(tp.endswith("-00") and tracing.valid_traceparent(tp) for tp in dropped)
    # Both kinds happen at 0.5, and every sampled root reached the exporter.
    assert sampled and dropped
    assert len(exporter.get_finished_spans()) == len(sampled)
    assert len({tp.split("-")[1] for _, tp in roots}) == len(roots)  # a new trace id each


def test_only_a_well_formed_traceparent_is_taken_from_a_header_or_an_event() -> None:
    good = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    assert tracing.valid_traceparent(good) == good
    for bad in (None, 7, "", good.upper(), good[:-1] + "x", good.replace("-", "_"), good + "0", '00-"}' + good[5:]):
        assert tracing.valid_traceparent(bad) is None, bad

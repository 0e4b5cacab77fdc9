"""Traces of a purchase, from the gateway to the payment call (docs/adr/0043-one-purchase-one-trace.md).

Off unless `OTEL_TRACES_EXPORTER` names an exporter (and `OTEL_SDK_DISABLED` is not true): then `TRACER` stays
None, and every traced place costs one module attribute read per request and makes nothing. On, the SDK
samples by the standard `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (parent-based by default) and exports
by the standard `OTEL_EXPORTER_OTLP_*` variables, over HTTP. The context rides as a W3C `traceparent`: in the
HTTP headers, in the purchase event, and on the order row, so the charge of an order joins its purchase's trace.
"""

from __future__ import annotations

import logging
import os
import re
from random import getrandbits

from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("service.tracing")

# None while tracing is off. Traced places read it at call time (`tracing.TRACER`), so one switch turns it all.
TRACER: Tracer | None = None
PROVIDER: TracerProvider | None = None
# True when the sampler is parent-based (every parentbased_* of OTEL_TRACES_SAMPLER, the default): a hop whose
# parent was not sampled then makes no span, so it can skip the SDK and pass the context on as it came.
FOLLOWS_PARENT = False
TRACE_ID_LIMIT = (1 << 64) - 1  # the bits of a trace id TraceIdRatioBased decides on


class ChosenTraceIds(RandomIdGenerator):
    """Random ids, except a trace id chosen just before a span is started (the root decision made by hand)."""

    def __init__(self) -> None:
        self.next_trace_id = 0

    def generate_trace_id(self) -> int:
        """The chosen trace id once, else a random one."""
        chosen = self.next_trace_id
        if chosen:
            self.next_trace_id = 0
            return chosen
        return super().generate_trace_id()


class RatioSampledProvider(TracerProvider):
    """Parent-based ratio sampling (`parentbased_traceidratio`) whose root decision `begin` can make itself.

    The SDK's root span costs ~13 µs even when it is dropped; drawing the trace id and comparing it with the
    sampler's bound costs ~1 µs, and a sampled root then gets that same trace id, so the SDK agrees.
    """

    def __init__(self, rate: float, resource: Resource | None = None) -> None:
        self.ids = ChosenTraceIds()
        self.bound = TraceIdRatioBased.get_bound_for_rate(rate)
        super().__init__(sampler=ParentBased(TraceIdRatioBased(rate)), resource=resource, id_generator=self.ids)


RATIO: RatioSampledProvider | None = None
TRACEPARENT_LENGTH = 55  # "00-" + 32 hex trace id + "-" + 16 hex span id + "-" + 2 hex flags
TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

_PROPAGATOR = TraceContextTextMapPropagator()


def tracing_wanted(env: dict[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables turn traces on: an exporter is named and the SDK is not disabled."""
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return env.get("OTEL_TRACES_EXPORTER", "").strip().lower() not in ("", "none")


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        # Imported only when used: the exporter pulls in protobuf and an HTTP session.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: this service exports 'otlp' (HTTP), 'console' or 'none'")


def configure_tracing(service: str) -> None:
    """Turn traces on for this process when the OTEL_* variables ask for them; otherwise leave them off."""
    if PROVIDER is not None or not tracing_wanted():
        return
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    resource = Resource.create({SERVICE_NAME: name})
    provider: TracerProvider
    if os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() == "parentbased_traceidratio":
        provider = RatioSampledProvider(float(os.environ.get("OTEL_TRACES_SAMPLER_ARG") or 1.0), resource)
    else:
        # No sampler given: the SDK reads OTEL_TRACES_SAMPLER(_ARG), parentbased_always_on when unset.
        provider = TracerProvider(resource=resource)
    for exporter in os.environ["OTEL_TRACES_EXPORTER"].split(","):
        provider.add_span_processor(BatchSpanProcessor(_exporter(exporter.strip().lower())))
    use_provider(provider)
    log.info("traces on", extra={"otel_service": name, "sampler": os.environ.get("OTEL_TRACES_SAMPLER", "default")})


def use_provider(provider: TracerProvider | None) -> None:
    """Trace with `provider` from now on (None: tracing off); the SDK flushes it at exit."""
    global TRACER, PROVIDER, FOLLOWS_PARENT, RATIO
    PROVIDER = provider
    RATIO = provider if isinstance(provider, RatioSampledProvider) else None
    TRACER = provider.get_tracer("flashsale-platform") if provider is not None else None
    FOLLOWS_PARENT = provider is not None and isinstance(provider.sampler, ParentBased)


def begin(tracer: Tracer, name: str, incoming: str | None, kind: SpanKind) -> tuple[Span | None, str]:
    """A hop's span (None when its trace is not sampled) and the traceparent it passes on.

    `incoming` is the caller's well-formed traceparent or None (this hop is the root). An unsampled trace
    gets no span: the incoming context goes on as it came, or a root's is made without the SDK.
    """
    if incoming is not None:
        if unsampled(incoming):
            return None, incoming
        span = tracer.start_span(name, context=parent_context(incoming), kind=kind)
        return span, traceparent_of(span)
    ratio = RATIO
    if ratio is not None:
        trace_id = getrandbits(128) or 1
        if trace_id & TRACE_ID_LIMIT >= ratio.bound:
            return None, f"00-{trace_id:032x}-{getrandbits(64) or 1:016x}-00"
        ratio.ids.next_trace_id = trace_id  # sampled: the SDK starts the root with this id and agrees
    span = tracer.start_span(name, kind=kind)
    return span, traceparent_of(span)


def parent_context(traceparent: str | None) -> Context | None:
    """The remote parent a W3C traceparent names; None (a new trace) when it is missing or malformed."""
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def unsampled(traceparent: str) -> bool:
    """True when a well-formed traceparent says "not sampled" and the sampler follows the parent: no span.

    Measured: extracting the context, starting a non-recording span and formatting its traceparent cost
    ~20 µs a request on the 2-core machine, for a span nobody sees; this costs a comparison.
    """
    return FOLLOWS_PARENT and len(traceparent) == TRACEPARENT_LENGTH and traceparent[-1] in "02468ace"


def traceparent_of(span: Span) -> str:
    """The W3C traceparent that makes `span` the parent, its sampled flag included (00 when not sampled)."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def valid_traceparent(value: object) -> str | None:
    """`value` when it is shaped like a W3C traceparent, else None (a header or event field is not trusted)."""
    if isinstance(value, str) and len(value) == TRACEPARENT_LENGTH and TRACEPARENT.fullmatch(value):
        return value
    return None

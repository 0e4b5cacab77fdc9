"""The request counter and latency histogram read out as Prometheus expects them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.common.metrics import RequestMetrics


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counts_and_cumulative_latency_buckets_per_label_set() -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics(
        counter="demo_requests_total",
        counter_help="Requests",
        counter_labels=["route", "status"],
        histogram="demo_request_duration_seconds",
        histogram_help="Latency",
        histogram_labels=["route"],
        buckets=(0.01, 0.1, 1.0),
        registry=registry,
    )
    for seconds, status in ((0.004, 202), (0.01, 202), (0.05, 409), (3.0, 503)):
        metrics.observe(("buy", status), ("buy",), seconds)
    metrics.observe(("browse", 200), ("browse",), 0.2)

    samples = _samples(registry)
    assert samples[("demo_requests_total", (("route", "buy"), ("status", "202")))] == 2
    assert samples[("demo_requests_total", (("route", "buy"), ("status", "409")))] == 1
    assert samples[("demo_requests_total", (("route", "buy"), ("status", "503")))] == 1
    assert samples[("demo_requests_total", (("route", "browse"), ("status", "200")))] == 1

    def bucket(route: str, le: str) -> float:
        return samples[("demo_request_duration_seconds_bucket", (("le", le), ("route", route)))]

    # A value on a bound counts in that bound's bucket (le = less or equal); buckets are cumulative.
    assert [bucket("buy", le) for le in ("0.01", "0.1", "1.0", "+Inf")] == [2, 3, 3, 4]
    assert [bucket("browse", le) for le in ("0.01", "0.1", "1.0", "+Inf")] == [0, 0, 1, 1]
    assert samples[("demo_request_duration_seconds_count", (("route", "buy"),))] == 4
    assert abs(samples[("demo_request_duration_seconds_sum", (("route", "buy"),))] - 3.064) < 1e-9


def test_nothing_observed_yet_exposes_the_families_without_samples() -> None:
    registry = CollectorRegistry()
    RequestMetrics(
        counter="idle_requests_total",
        counter_help="Requests",
        counter_labels=["route"],
        histogram="idle_request_duration_seconds",
        histogram_help="Latency",
        histogram_labels=["route"],
        registry=registry,
    )
    text = generate_latest(registry).decode()
    assert "# TYPE idle_requests_total counter" in text
    assert "# TYPE idle_request_duration_seconds histogram" in text
    assert _samples(registry) == {}

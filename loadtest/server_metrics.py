"""Where a run's pay time went on the server: the order replicas' /metrics, read before and after the load.

The drill reads every order replica's Prometheus exposition before Locust starts and after it ends, and keeps
the difference (the stack outlives a drill, its counters do not start at zero): the pay route as the order
process timed it (ASGI in to out), its steps (`order_pay_stage_seconds`, the Idempotency-Key record's
statements), the event loop's lag, the other order routes for comparison, the providers' own time per charge,
and the CPU the order processes used. Quantiles are read from the histogram buckets (linear within a bucket),
so they are estimates at the buckets' resolution.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

# (name in the summary, metric, labels that pick the series; the rest are summed over)
SERIES: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("pay", "http_request_duration_seconds", {"route": "/orders/{order_id}/pay"}),
    ("pay: waiting for a pooled connection", "order_pay_stage_seconds", {"stage": "connection"}),
    ("pay: Idempotency-Key claimed", "order_idempotency_record_seconds", {"scope": "order-pay", "step": "claim"}),
    ("pay: order claimed", "order_pay_stage_seconds", {"stage": "claim"}),
    ("pay: charge (providers)", "order_pay_stage_seconds", {"stage": "charge"}),
    ("pay: settled", "order_pay_stage_seconds", {"stage": "settle"}),
    (
        "pay: Idempotency-Key answer stored",
        "order_idempotency_record_seconds",
        {"scope": "order-pay", "step": "answer"},
    ),
    ("event-loop lag (50 ms timer)", "event_loop_lag_seconds", {}),
    ("GET /orders", "http_request_duration_seconds", {"route": "/orders"}),
    (
        "GET /orders/by-reservation",
        "http_request_duration_seconds",
        {"route": "/orders/by-reservation/{reservation_id}"},
    ),
)
PROVIDER_SERIES = ("provider: POST /payments", "http_request_duration_seconds", {"route": "/payments"})

Histogram = dict[str, Any]  # {"buckets": {upper bound: cumulative count}, "count": n, "sum": seconds}


def scrape(urls: list[str]) -> dict[str, Any]:
    """The histograms of SERIES (and the providers'), summed over `urls`, and the processes' CPU seconds."""
    texts = []
    for url in urls:
        try:
            texts.append(httpx.get(f"{url}/metrics", timeout=10).text)
        except httpx.HTTPError:
            continue  # a replica that does not answer now: its share is missing from the figures
    return {"replicas": len(texts), **parse(texts)}


def parse(texts: list[str]) -> dict[str, Any]:
    """The histograms of SERIES (and the providers'), summed over Prometheus expositions, and their CPU seconds."""
    wanted = [*SERIES, PROVIDER_SERIES]
    histograms: dict[str, Histogram] = {name: {"buckets": {}, "count": 0.0, "sum": 0.0} for name, _m, _l in wanted}
    cpu = 0.0
    for exposition in texts:
        for family in text_string_to_metric_families(exposition):
            if family.name == "process_cpu_seconds":
                cpu += sum(s.value for s in family.samples)
                continue
            for name, metric, labels in wanted:
                if family.name != metric:
                    continue
                into = histograms[name]
                for sample in family.samples:
                    if any(sample.labels.get(k) != v for k, v in labels.items()):
                        continue
                    if sample.name.endswith("_bucket"):
                        bound = float(sample.labels["le"])
                        into["buckets"][bound] = into["buckets"].get(bound, 0.0) + sample.value
                    elif sample.name.endswith("_count"):
                        into["count"] += sample.value
                    elif sample.name.endswith("_sum"):
                        into["sum"] += sample.value
    return {"histograms": histograms, "cpu_seconds": cpu}


def difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What happened between two scrapes: per series count, mean, p50 and p99 (ms); CPU seconds used."""
    out: dict[str, Any] = {"cpu_seconds": round(after["cpu_seconds"] - before["cpu_seconds"], 2), "series": {}}
    for name, late in after["histograms"].items():
        early = before["histograms"].get(name, {"buckets": {}, "count": 0.0, "sum": 0.0})
        buckets = {b: n - early["buckets"].get(b, 0.0) for b, n in late["buckets"].items()}
        count = late["count"] - early["count"]
        if count <= 0:
            continue
        out["series"][name] = {
            "count": int(count),
            "mean_ms": round(1000 * (late["sum"] - early["sum"]) / count, 1),
            "p50_ms": quantile_ms(buckets, 0.5),
            "p99_ms": quantile_ms(buckets, 0.99),
        }
    return out


def quantile_ms(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile of cumulative buckets in ms, linear within its bucket; the last finite bound if beyond."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return round(1000 * lower, 1)
            share = (rank - below) / (count - below) if count > below else 1.0
            return round(1000 * (lower + (bound - lower) * share), 1)
        lower, below = bound, count
    return round(1000 * lower, 1)

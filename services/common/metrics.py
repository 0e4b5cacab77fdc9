"""The per-request counter and latency histogram of every service and the gateway, counted in plain dicts.

prometheus_client's Counter.inc and Histogram.observe take a lock each and walk the buckets in Python:
~3.7 us per request on the benchmark machine, paid on every request of the hot paths. Here a request
costs two dict updates and a C bisect (~0.6 us); the library still renders the exposition, from this
collector, at scrape time. Counted from the event loop's thread only (the services' middleware and the
gateway's proxy run there), so no lock is needed. Unlike the library's Counter, no `_created` series is
exposed.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# A request's labels: strings, and the status code as an int (turned into text at scrape time).
Labels = tuple[str | int, ...]


class RequestMetrics:
    """A `<counter>_total` of requests and a `<histogram>` of their latency, each with its own labels."""

    def __init__(
        self,
        *,
        counter: str,
        counter_help: str,
        counter_labels: Sequence[str],
        histogram: str,
        histogram_help: str,
        histogram_labels: Sequence[str],
        buckets: Sequence[float] = LATENCY_BUCKETS,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.counter = counter.removesuffix("_total")
        self.counter_help = counter_help
        self.counter_labels = list(counter_labels)
        self.histogram = histogram
        self.histogram_help = histogram_help
        self.histogram_labels = list(histogram_labels)
        self.bounds = tuple(sorted(b for b in buckets if b != math.inf))  # +Inf is always the last bucket
        self.counts: dict[Labels, int] = {}
        # Per label set: a count per bucket (values <= its bound and above the one before), then the count
        # above the last bound, then the sum of the observed seconds.
        self.latencies: dict[Labels, list[float]] = {}
        registry.register(self)

    def observe(self, counted: Labels, timed: Labels, seconds: float) -> None:
        """Count one request under the counter's labels `counted` and its latency under `timed`."""
        counts = self.counts
        counts[counted] = counts.get(counted, 0) + 1
        latency = self.latencies.get(timed)
        if latency is None:
            latency = self.latencies[timed] = [0.0] * (len(self.bounds) + 2)
        latency[bisect_left(self.bounds, seconds)] += 1
        latency[-1] += seconds

    def describe(self) -> Iterator[Metric]:
        """The metric names, for the registry's duplicate check."""
        yield CounterMetricFamily(self.counter, self.counter_help, labels=self.counter_labels)
        yield HistogramMetricFamily(self.histogram, self.histogram_help, labels=self.histogram_labels)

    def collect(self) -> Iterator[Metric]:
        """The counter and the histogram as they stand now (cumulative buckets, as Prometheus reads them)."""
        requests = CounterMetricFamily(self.counter, self.counter_help, labels=self.counter_labels)
        for labels, count in list(self.counts.items()):
            requests.add_metric([str(v) for v in labels], count)
        yield requests
        latency = HistogramMetricFamily(self.histogram, self.histogram_help, labels=self.histogram_labels)
        edges = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for labels, per_bucket in list(self.latencies.items()):
            cumulative: list[tuple[str, float]] = []
            running = 0.0
            for edge, in_bucket in zip(edges, per_bucket, strict=False):
                running += in_bucket
                cumulative.append((edge, running))
            latency.add_metric([str(v) for v in labels], cumulative, sum_value=per_bucket[-1])
        yield latency


class CounterTable:
    """A `<name>_total` counter per label set, counted with one dict update and rendered at scrape time.

    For the counters of the hot paths (per sale, per outcome). The caller keeps label values bounded.
    """

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str], registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.name = name.removesuffix("_total")
        self.help = help_text
        self.labels = list(labels)
        # Whole counts: events, units, money in minor units (an int sum stays exact where a float sum would not).
        self.counts: dict[tuple[str, ...], int] = {}
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: int = 1) -> None:
        """Add `amount` under `labels` (one value per label name, in order)."""
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + amount

    def value(self, labels: tuple[str, ...]) -> int:
        """The count under `labels` now (0 if never counted)."""
        return self.counts.get(labels, 0)

    def describe(self) -> Iterator[Metric]:
        """The metric name, for the registry's duplicate check."""
        yield CounterMetricFamily(self.name, self.help, labels=self.labels)

    def collect(self) -> Iterator[Metric]:
        """The counter as it stands now."""
        family = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for labels, count in list(self.counts.items()):
            family.add_metric(list(labels), count)
        yield family


class GaugeTable:
    """Gauges per label set that a periodic job replaces as a whole: a sale that ended drops out of it.

    Each job replaces its own `part` only, so two services run in one process (as in the tests) do not
    erase each other's series.
    """

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str], registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.name = name
        self.help = help_text
        self.labels = list(labels)
        self.parts: dict[str, dict[tuple[str, ...], float]] = {}
        registry.register(self)

    def replace(self, values: dict[tuple[str, ...], float], part: str = "") -> None:
        """Show exactly `values` for `part` from now on."""
        self.parts[part] = values

    def set(self, labels: tuple[str, ...], value: float, part: str = "") -> None:
        """Set one label set's value, keeping the others."""
        self.parts.setdefault(part, {})[labels] = value

    def describe(self) -> Iterator[Metric]:
        """The metric name, for the registry's duplicate check."""
        yield GaugeMetricFamily(self.name, self.help, labels=self.labels)

    def collect(self) -> Iterator[Metric]:
        """The gauges as last set."""
        family = GaugeMetricFamily(self.name, self.help, labels=self.labels)
        for values in list(self.parts.values()):
            for labels, value in list(values.items()):
                family.add_metric(list(labels), value)
        yield family

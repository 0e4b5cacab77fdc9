"""The drill summary: the pay route's latency as the order processes timed it, next to what Locust saw."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from loadtest import report, server_metrics

BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0)


def _exposition(pay_seconds: list[float], claim_seconds: list[float]) -> str:
    """What one order replica's /metrics says after these pays."""
    registry = CollectorRegistry()
    route = Histogram("http_request_duration_seconds", "", ["route"], buckets=BUCKETS, registry=registry)
    stage = Histogram("order_pay_stage_seconds", "", ["stage"], buckets=BUCKETS, registry=registry)
    for seconds in pay_seconds:
        route.labels("/orders/{order_id}/pay").observe(seconds)
        route.labels("/orders").observe(0.001)
    for seconds in claim_seconds:
        stage.labels("claim").observe(seconds)
    return generate_latest(registry).decode()


def test_the_summary_reports_only_the_pays_made_during_the_load_as_the_order_processes_timed_them(
    tmp_path: Path,
) -> None:
    before = server_metrics.parse([_exposition([2.0] * 10, [0.9] * 10), _exposition([], [])])
    after = server_metrics.parse(
        [_exposition([2.0] * 10 + [0.02] * 50, [0.9] * 10 + [0.03] * 50), _exposition([0.04] * 40, [0.02] * 40)]
    )
    (tmp_path / "server_metrics.json").write_text(
        json.dumps({"order": server_metrics.difference(before, after), "providers": {}})
    )

    summary = report.write_report(tmp_path)

    pay = summary["server_side"]["order"]["series"]["pay"]
    assert pay["count"] == 90  # the 10 slow pays before the load are not counted
    assert pay["p50_ms"] is not None and 10 <= pay["p50_ms"] <= 50
    assert pay["p99_ms"] is not None and pay["p99_ms"] <= 50
    claim = summary["server_side"]["order"]["series"]["pay: order claimed"]
    assert claim["count"] == 90 and claim["p99_ms"] is not None and claim["p99_ms"] <= 50
    text = (tmp_path / "summary.md").read_text()
    assert "- pay in the order processes (ASGI in to out): p50 " in text
    assert "| pay: order claimed | 90 |" in text

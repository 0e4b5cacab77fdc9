"""The run report: summary.md / summary.json and plot.png, from what a run left in its directory.

    .venv/bin/python -m loadtest.report loadtest/results/<run>

Reads Locust's CSVs (locust_stats.csv, locust_stats_history.csv), outcomes.json (every answer's `code`, from
the locustfile), drill.json (the fault's name and when it was injected and restored, if any), checker.json,
sale.json (the sale's admin stats: when it went live and sold out) and server_metrics.json (the order and
provider processes' own timings during the load, loadtest/server_metrics.py). The plot (requests/s and p99 over
time, the fault shaded) needs matplotlib (`pip install -e ".[loadtest]"`); without it the summary says so.
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

PAY_ROUTE = "POST /orders/{id}/pay"  # the pay route's latency is a headline figure (aim: p50 <= 50 ms, p99 <= 300 ms)

# Business answers: the system said no on purpose, correctly (the locustfile counts them as successes too).
BUSINESS_CODES = frozenset(
    {
        "SOLD_OUT",
        "INSUFFICIENT_STOCK",
        "SALE_NOT_LIVE",
        "PURCHASE_LIMIT_EXCEEDED",
        "ORDER_NOT_FOUND",  # the order of a fresh reservation is not created yet: keep polling
        "ORDER_PRICING_PENDING",  # its coupons are still being applied: pay again shortly
        "PAYMENT_IN_PROGRESS",  # a charge of the order is in flight: its outcome decides the order
        "COUPONS_EXHAUSTED",  # every coupon of the template was claimed
        "CLAIM_LIMIT_REACHED",
    }
)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _num(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def read_stats(run_dir: Path) -> list[dict[str, str]]:
    """Locust's final stats rows (one per request name, then Aggregated)."""
    path = run_dir / "locust_stats.csv"
    if not path.exists():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def read_history(run_dir: Path) -> list[tuple[float, float, float | None, int]]:
    """(unix time, requests/s, p99 ms, users) of the Aggregated row of each history line."""
    path = run_dir / "locust_stats_history.csv"
    if not path.exists():
        return []
    out = []
    with path.open() as fh:
        for row in csv.DictReader(fh):
            if row["Name"] == "Aggregated":
                out.append(
                    (float(row["Timestamp"]), float(row["Requests/s"]), _num(row["99%"]), int(row["User Count"]))
                )
    return out


def time_to_sell_out(sale: dict[str, Any]) -> float | None:
    """Seconds from the sale going live to its first sell-out (server clocks), or None."""
    live, sold_out = sale.get("went_live_at") or sale.get("starts_at"), sale.get("first_sold_out_at")
    if not live or not sold_out:
        return None
    return (datetime.fromisoformat(sold_out) - datetime.fromisoformat(live)).total_seconds()


def summarize(run_dir: Path) -> dict[str, Any]:
    """The numbers of a run, as JSON-ready data."""
    stats = read_stats(run_dir)
    outcomes = _read_json(run_dir / "outcomes.json")
    drill = _read_json(run_dir / "drill.json")
    checker = _read_json(run_dir / "checker.json")
    sale = _read_json(run_dir / "sale.json")
    server_side = _read_json(run_dir / "server_metrics.json")
    total = next((r for r in stats if r["Name"] == "Aggregated"), None)
    endpoints = {
        r["Name"]: {
            "requests": int(r["Request Count"]),
            "failures": int(r["Failure Count"]),
            "rps": round(float(r["Requests/s"]), 1),
            "p50_ms": _num(r["50%"]),
            "p95_ms": _num(r["95%"]),
            "p99_ms": _num(r["99%"]),
        }
        for r in stats
    }
    errors: dict[str, int] = {}
    business: dict[str, int] = {}
    failed: dict[str, dict[str, int]] = {}
    for route, codes in outcomes.get("codes", {}).items():
        for code, n in codes.items():
            if code.isdigit():
                continue
            bucket = business if code in BUSINESS_CODES else errors
            bucket[code] = bucket.get(code, 0) + n
            if code not in BUSINESS_CODES:
                failed.setdefault(route, {})[code] = n
    return {
        "run": run_dir.name,
        "drill": drill.get("drill"),
        "fault": drill.get("fault"),
        "throughput_rps": endpoints.get("Aggregated", {}).get("rps"),
        "requests": int(total["Request Count"]) if total else 0,
        "failures": int(total["Failure Count"]) if total else 0,
        "latency_ms": {k: endpoints.get("Aggregated", {}).get(k) for k in ("p50_ms", "p95_ms", "p99_ms")},
        "pay_latency_ms": {k: endpoints.get(PAY_ROUTE, {}).get(k) for k in ("p50_ms", "p95_ms", "p99_ms")},
        "server_side": server_side,
        "endpoints": endpoints,
        "errors_by_code": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        "failures_by_route": {
            route: dict(sorted(codes.items(), key=lambda kv: -kv[1])) for route, codes in sorted(failed.items())
        },
        "business_answers_by_code": dict(sorted(business.items(), key=lambda kv: -kv[1])),
        "accepted_purchases": outcomes.get("accepted"),
        "time_to_sell_out_s": time_to_sell_out(sale),
        "sale": sale,
        "checker": {"ok": checker.get("ok"), "violations": [f for f in checker.get("findings", []) if not f["ok"]]},
    }


def plot(run_dir: Path, summary: dict[str, Any]) -> Path | None:
    """plot.png: requests/s and p99 over time, the fault window shaded; None without matplotlib or history."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    history = read_history(run_dir)
    if not history:
        return None
    t0 = history[0][0]
    xs = [t - t0 for t, *_ in history]
    fig, ax_rps = plt.subplots(figsize=(10, 4.5))
    ax_rps.plot(xs, [rps for _t, rps, _p, _u in history], color="tab:blue", label="requests/s")
    ax_rps.set_xlabel("seconds since the load started")
    ax_rps.set_ylabel("requests/s", color="tab:blue")
    ax_p99 = ax_rps.twinx()
    ax_p99.plot(xs, [p if p is not None else float("nan") for _t, _r, p, _u in history], color="tab:red", label="p99")
    ax_p99.set_ylabel("p99 ms (10 s window)", color="tab:red")
    fault = summary.get("fault") or {}
    if fault.get("injected_at"):
        start = float(fault["injected_at"]) - t0
        end = float(fault.get("restored_at") or fault["injected_at"]) - t0
        ax_rps.axvspan(start, max(end, start + 0.5), color="tab:orange", alpha=0.25, label=f"fault: {fault['name']}")
    sale_start = (summary.get("sale") or {}).get("went_live_at")
    if sale_start:
        ax_rps.axvline(datetime.fromisoformat(sale_start).timestamp() - t0, color="grey", ls="--", label="sale start")
    handles = ax_rps.get_legend_handles_labels()[0] + ax_p99.get_legend_handles_labels()[0]
    ax_rps.legend(handles=handles, loc="upper right", fontsize="small")
    ax_rps.set_title(f"{summary.get('drill') or 'run'} {summary['run']}: throughput and p99")
    fig.tight_layout()
    out = run_dir / "plot.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f} %" if whole else "-"


def render(summary: dict[str, Any], plot_path: Path | None) -> str:
    """summary.md: the headline numbers, the endpoints, errors by code and by endpoint, the checker's verdict."""
    lat = summary["latency_ms"]
    pay = summary.get("pay_latency_ms") or {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    sell_out = summary["time_to_sell_out_s"]
    lines = [
        f"# {summary.get('drill') or 'run'} {summary['run']}",
        "",
        f"- throughput: {summary['throughput_rps'] or 0:,.1f} requests/s over {summary['requests']:,} requests "
        f"({summary['failures']:,} failed, {_share(summary['failures'], summary['requests'])})",
        f"- latency (all requests): p50 {_ms(lat['p50_ms'])} ms, p95 {_ms(lat['p95_ms'])} ms, "
        f"p99 {_ms(lat['p99_ms'])} ms",
        f"- pay latency ({PAY_ROUTE}): p50 {_ms(pay['p50_ms'])} ms, p95 {_ms(pay['p95_ms'])} ms, "
        f"p99 {_ms(pay['p99_ms'])} ms",
        f"- accepted purchases: {summary['accepted_purchases']}; time to sell out: "
        + (f"{sell_out:.1f} s" if sell_out is not None else "did not sell out"),
    ]
    fault = summary.get("fault")
    if fault:
        lines.append(
            f"- fault: {fault['name']}, injected at +{fault.get('injected_after_s', 0):.0f} s, "
            f"restored after {fault.get('lasted_s', 0):.1f} s"
        )
    checker = summary["checker"]
    verdict = (
        "not run"
        if checker["ok"] is None
        else "all invariants held"
        if checker["ok"]
        else "VIOLATIONS: " + "; ".join(f"{v['name']}: {v['detail']}" for v in checker["violations"])
    )
    lines += [
        f"- checker: {verdict}",
        *_server_side_lines(summary.get("server_side") or {}),
        "",
        "| endpoint | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
    ]
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for name, e in summary["endpoints"].items():
        lines.append(
            f"| {name} | {e['requests']:,} | {e['failures']:,} | {e['rps']:,.1f} | {_ms(e['p50_ms'])} "
            f"| {_ms(e['p95_ms'])} | {_ms(e['p99_ms'])} |"
        )
    lines += ["", "Errors by `code` (failures of the system):"]
    lines += [f"- {code}: {n:,}" for code, n in summary["errors_by_code"].items()] or ["- none"]
    lines += ["", "Failures by endpoint and `code`:", "", "| endpoint | code | failures |", "|---|---|---:|"]
    lines += [
        f"| {route} | {code} | {n:,} |"
        for route, codes in summary.get("failures_by_route", {}).items()
        for code, n in codes.items()
    ] or ["| - | none | 0 |"]
    lines += ["", "Business answers by `code` (correct refusals, not failures):"]
    lines += [f"- {code}: {n:,}" for code, n in summary["business_answers_by_code"].items()] or ["- none"]
    lines += ["", f"Plot: {plot_path.name if plot_path else 'not drawn (matplotlib missing or no history)'}"]
    return "\n".join(lines) + "\n"


def _server_side_lines(server_side: dict[str, Any]) -> list[str]:
    """The pay route as the order processes timed it, its steps, their loop lag and CPU, and the providers'."""
    order = server_side.get("order") or {}
    series = {**order.get("series", {}), **(server_side.get("providers") or {}).get("series", {})}
    pay = series.get("pay")
    if not pay:
        return []
    lines = [
        f"- pay in the order processes (ASGI in to out): p50 {_ms(pay['p50_ms'])} ms, p99 {_ms(pay['p99_ms'])} ms "
        f"over {pay['count']:,} calls; order processes' CPU during the load: {order.get('cpu_seconds', 0):,.1f} s",
        "",
        "Server-side times (the order and provider processes' histograms, read before and after the load; "
        "quantiles are bucket estimates):",
        "",
        "| series | count | mean ms | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {s['count']:,} | {s['mean_ms']:,.1f} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} |"
        for name, s in series.items()
    ]
    return lines


def write_report(run_dir: Path) -> dict[str, Any]:
    """Write summary.json, summary.md and plot.png into the run directory; returns the summary."""
    summary = summarize(run_dir)
    plot_path = plot(run_dir, summary)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (run_dir / "summary.md").write_text(render(summary, plot_path))
    return summary


def main(argv: list[str]) -> int:
    """Report on one run directory."""
    if len(argv) != 1:
        print("usage: python -m loadtest.report RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    write_report(run_dir)
    print((run_dir / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Where the benchmarks write, what every JSON report starts with, and the tables they print."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "loadtest" / "results"


def report_header(module: str, argv: Sequence[str] | None, load_before: Sequence[float], opts: Any) -> dict[str, Any]:
    """What every benchmark's JSON report starts with: when, the exact command, the machine and the load.

    `opts` is the benchmark's Options (duration, warm-up, connections, threads, users).
    """
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", module, *(argv or sys.argv[1:])]),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "params": {
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "connections": opts.connections,
            "threads": opts.threads,
            "users": opts.users,
        },
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the JSON report and say where it went (relative to the repo root when inside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"\nresults written to {shown}")


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: range | None = None) -> list[str]:
    """Header, rule and rows in aligned columns: the first column left, the `numeric` ones (default: all the
    others) right-aligned, any further ones left."""
    right = numeric if numeric is not None else range(1, len(header))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]

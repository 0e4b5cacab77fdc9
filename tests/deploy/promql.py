"""Reading PromQL as the rule and dashboard tests need it: promtool, the rules, the metric names an expression
reads, and the names the services and the gateway expose."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

from tests.conftest import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "observability.md"
# Importing them registers every service's and the gateway's metrics in this process's registry.
SERVICE_MODULES = [f"services.{name}.main" for name in ("flashsale", "order", "coupon", "inventory", "paysim")]
SERVICE_MODULES.append("gateway.main")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless"}
SEVERITIES = {"page", "ticket", "info"}


def promtool(*args: str | Path, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    """Run promtool (from the `prometheus` package; .ci/run installs it)."""
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd)


def rules() -> list[dict[str, Any]]:
    """Every rule of every rule file."""
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def metric_names(expr: str, *, recorded: bool = False) -> set[str]:
    """The metric names an expression reads: the services' names, or with `recorded` the recording rules'
    level:metric:ops names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings first: label values may hold any character
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text):
        name = match.group(1)
        if name not in PROMQL_WORDS and (":" in name) == recorded:
            names.add(name)
    return names


def exposed_names() -> set[str]:
    """Every sample name the services and the gateway expose, from the registry their modules fill."""
    for module in SERVICE_MODULES:
        importlib.import_module(module)
    names = set()
    for family in REGISTRY.collect():
        kind = family.type
        if kind == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif kind == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum", "created")}
        else:
            names.add(family.name)
        names |= {s.name for s in family.samples}
    return names

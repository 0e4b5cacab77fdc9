"""The Grafana dashboards in deploy/grafana: every panel query parses for promtool and reads only metrics a
service exposes or a recording rule records; the provisioning files point at them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT
from tests.deploy.promql import exposed_names, metric_names, promtool, rules

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# What Grafana puts in place of its variables before it sends a query.
VARIABLES = {"$sale": ".+", "$__rate_interval": "5m", "$__interval": "1m"}


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, query) of every panel target, variables filled in as Grafana would."""
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in VARIABLES.items():
                    expr = expr.replace(variable, value)
                out.append((path.stem, panel["title"], expr))
    return out


def test_every_panel_query_parses_for_promtool(tmp_path: Path) -> None:
    queries = panel_queries()
    assert len(queries) >= 30
    group = {
        "name": "panels",
        "rules": [{"record": f"panel:query{i}:check", "expr": q} for i, (_, _, q) in enumerate(queries)],
    }
    rule_file = tmp_path / "panels.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [group]}))
    result = promtool("check", "rules", rule_file, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_every_panel_reads_only_exposed_or_recorded_metrics() -> None:
    exposed = exposed_names()
    recorded = {r["record"] for r in rules() if "record" in r}
    for dashboard, title, query in panel_queries():
        assert metric_names(query) <= exposed, f"{dashboard} / {title}: {metric_names(query) - exposed}"
        assert metric_names(query, recorded=True) <= recorded, f"{dashboard} / {title} reads an unrecorded rule"


def test_the_dashboards_have_unique_ids_and_panels_on_the_provisioned_datasource() -> None:
    boards: list[dict[str, Any]] = [json.loads(p.read_text()) for p in DASHBOARDS]
    assert {b["uid"] for b in boards} == {"flashsale-sale-overview", "flashsale-sre"}
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for board in boards:
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), board["uid"]
        assert all(p["datasource"]["uid"] == uid for p in board["panels"]), board["uid"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "flashsale.yml").read_text())
    assert provider["providers"][0]["type"] == "file"

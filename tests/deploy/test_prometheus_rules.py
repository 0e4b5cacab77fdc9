"""The Prometheus rules in deploy/prometheus: valid for promtool, their unit tests pass, every alert is tested
firing and silent and has its runbook, every metric they read is one a service exposes, and the local stack's
Prometheus config scrapes every replica."""

from __future__ import annotations

import yaml

from deploy.topology import SERVICES
from tests.deploy.promql import (
    PROMETHEUS,
    RULE_FILES,
    RUNBOOK,
    SEVERITIES,
    TEST_FILES,
    exposed_names,
    metric_names,
    promtool,
    rules,
)


def test_every_rule_file_passes_promtool_check() -> None:
    result = promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES) >= 3


def test_the_rule_unit_tests_pass_in_promtool() -> None:
    result = promtool("test", "rules", *TEST_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES) >= 3
    assert "FAILED" not in result.stdout


def test_every_alert_is_tested_both_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert len(alerts) >= 15
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested silent"


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_section() -> None:
    doc = RUNBOOK.read_text()
    headings = {line.removeprefix("### ").strip() for line in doc.splitlines() if line.startswith("### ")}
    for rule in (r for r in rules() if "alert" in r):
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook"] == f"docs/observability.md#{name.lower()}", name
        assert name in headings, f"docs/observability.md has no '### {name}' section"


def test_every_metric_a_rule_reads_is_exposed_by_a_service() -> None:
    exposed = exposed_names()
    read = {name for rule in rules() for name in metric_names(str(rule["expr"]))}
    assert {"flashsale_sale_purchases_total", "order_sale_gmv_paid_minor_total", "gateway_replica_up"} <= read
    assert read - exposed == set(), "rules read metrics no service exposes"


def test_the_metric_name_reader_sees_through_labels_ranges_and_functions() -> None:
    expr = 'max by (sale_id) (rate(a_total{x="b{c}"}[5m] offset 1m)) > on (sale_id) b_units * 0.8 and level:c:rate1m'
    assert metric_names(expr) == {"a_total", "b_units"}
    assert metric_names(expr, recorded=True) == {"level:c:rate1m"}


def test_the_compose_config_is_valid_and_scrapes_every_replica_by_its_compose_name_under_its_service() -> None:
    result = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    scraped = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert scraped == {s.name: [f"{replica}:{port}" for replica, port in s.replicas(0)] for s in SERVICES}
    assert config["global"] == {"scrape_interval": "15s", "evaluation_interval": "15s"}, "production intervals"
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]

"""The configs the launcher writes for its Prometheus and Alertmanager: valid for promtool and amtool, every
replica of the topology at the stack's port offset, the shipped rule files read in place, and the shipped routes
with or without the receivers' URLs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploy import observability
from deploy.errors import StackError
from deploy.topology import HOST, SERVICES
from tests.deploy.promql import RULE_FILES, promtool
from tests.deploy.test_alertmanager_config import amtool, receivers_for

URLS = {"ALERT_WEBHOOK_URL": "https://hooks.example/alerts", "ALERT_SMS_WEBHOOK_URL": "https://sms.example/page"}


def test_the_stack_prometheus_scrapes_every_replica_at_the_port_offset_under_its_service_name(tmp_path: Path) -> None:
    path = observability.write_prometheus_config(tmp_path / "prometheus.yml", 500, 19093)
    result = promtool("check", "config", path, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout
    config = yaml.safe_load(path.read_text())
    scraped = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert scraped == {s.name: [f"{HOST}:{port + 500}" for port in s.ports] for s in SERVICES}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [f"{HOST}:19093"]
    assert config["global"] == {"scrape_interval": "2s", "evaluation_interval": "2s"}


def test_the_stack_prometheus_reads_the_shipped_rule_files_in_place() -> None:
    assert observability.prometheus_config(0, None)["rule_files"] == [str(p) for p in RULE_FILES]
    assert "alerting" not in observability.prometheus_config(0, None), "no Alertmanager: nothing to send to"


def test_prometheus_and_alertmanager_ports_follow_the_offset_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_PORT_OFFSET", "500")
    monkeypatch.delenv("STACK_PROMETHEUS_PORT", raising=False)
    monkeypatch.delenv("STACK_ALERTMANAGER_PORT", raising=False)
    assert (observability.prometheus_port(), observability.alertmanager_port()) == (9590, 9593)
    monkeypatch.setenv("STACK_PROMETHEUS_PORT", "19090")
    assert observability.prometheus_port() == 19090
    monkeypatch.setenv("STACK_ALERTMANAGER_PORT", "ninety")
    with pytest.raises(StackError, match="STACK_ALERTMANAGER_PORT must be a TCP port"):
        observability.alertmanager_port()


def test_without_webhook_urls_the_stack_alertmanager_keeps_the_routes_and_delivers_nowhere(tmp_path: Path) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(observability.alertmanager_config({}))
    assert amtool("check-config", path).returncode == 0
    config = yaml.safe_load(path.read_text())
    assert all("webhook_configs" not in r for r in config["receivers"])
    assert receivers_for(path, "alertname=PoolDown", "severity=page") == "sms-and-webhook"
    assert receivers_for(path, "alertname=ReplicaDown", "severity=ticket") == "webhook"


def test_with_webhook_urls_the_stack_alertmanager_posts_to_them(tmp_path: Path) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(observability.alertmanager_config(URLS))
    assert amtool("check-config", path).returncode == 0
    hooks = {r["name"]: [w["url"] for w in r["webhook_configs"]] for r in yaml.safe_load(path.read_text())["receivers"]}
    assert hooks == {"webhook": [URLS["ALERT_WEBHOOK_URL"]], "sms-and-webhook": list(URLS.values())[::-1]}


def test_without_prometheus_on_path_the_stack_starts_without_monitoring(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    state: dict[str, dict[str, object]] = {"processes": {}}
    assert observability.start_observability(state) == []
    assert state == {"processes": {}}
    assert "prometheus is not on PATH: skipping Prometheus and Alertmanager" in capsys.readouterr().out

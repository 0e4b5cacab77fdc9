"""The Alertmanager config: rendered from its template with the receivers' URLs from the environment, valid for
amtool, pages to the SMS gateway and the webhook, tickets and info to the webhook only, and the inhibitions
that keep one outage from paging many times."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.alertmanager_config import TEMPLATE, render_config, write_config
from deploy.cli import main
from deploy.errors import StackError

URLS = {
    "ALERT_WEBHOOK_URL": "http://127.0.0.1:9099/alerts",
    "ALERT_SMS_WEBHOOK_URL": "https://sms.example.com/v1/send?token=t0ken",
}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config as `python -m deploy alertmanager-config` writes it."""
    return write_config(tmp_path_factory.mktemp("alertmanager") / "alertmanager.yml", URLS)


def amtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run amtool (from the `prometheus-alertmanager` package; .ci/run installs it)."""
    return subprocess.run(["amtool", *map(str, args)], capture_output=True, text=True, timeout=60)


def receivers_for(config: Path, *labels: str) -> str:
    """The receivers an alert with these labels reaches, as amtool prints them."""
    result = amtool("config", "routes", "test", f"--config.file={config}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_the_rendered_config_passes_amtool_check_config(config: Path) -> None:
    result = amtool("check-config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "2 receivers" in result.stdout and "2 inhibit rules" in result.stdout


def test_the_receivers_urls_come_from_the_environment_and_stay_out_of_the_template(config: Path) -> None:
    receivers = {r["name"]: r for r in yaml.safe_load(config.read_text())["receivers"]}
    urls = [h["url"] for h in receivers["sms-and-webhook"]["webhook_configs"]]
    assert urls == [URLS["ALERT_SMS_WEBHOOK_URL"], URLS["ALERT_WEBHOOK_URL"]]
    assert [h["url"] for h in receivers["webhook"]["webhook_configs"]] == [URLS["ALERT_WEBHOOK_URL"]]
    assert "t0ken" not in TEMPLATE.read_text()
    assert config.stat().st_mode & 0o077 == 0


def test_a_page_reaches_the_sms_gateway_and_a_ticket_or_info_only_the_webhook(config: Path) -> None:
    assert receivers_for(config, "alertname=PoolDown", "severity=page", "pool=order") == "sms-and-webhook"
    assert receivers_for(config, "alertname=SaleLowStock", "severity=ticket", "sale_id=7") == "webhook"
    assert receivers_for(config, "alertname=SaleSoldOutFast", "severity=info", "sale_id=7") == "webhook"
    assert receivers_for(config, "alertname=Unlabelled") == "webhook"


def test_a_pool_down_inhibits_its_replicas_and_redis_down_inhibits_the_lag_it_causes(config: Path) -> None:
    rules = yaml.safe_load(config.read_text())["inhibit_rules"]
    pool = next(r for r in rules if r["source_matchers"] == ['alertname="PoolDown"'])
    assert pool["target_matchers"] == ['alertname="ReplicaDown"'] and pool["equal"] == ["pool"]
    redis = next(r for r in rules if r["source_matchers"] == ['alertname="RedisUnreachable"'])
    lag_alerts = redis["target_matchers"][0].split('"')[1].split("|")
    assert {"OrderCreationStalled", "OutboxStuck"} <= set(lag_alerts)
    assert "PoolDown" not in lag_alerts


def test_grouping_keeps_each_sale_and_pool_apart(config: Path) -> None:
    assert yaml.safe_load(config.read_text())["route"]["group_by"] == ["alertname", "sale_id", "pool"]


def test_rendering_without_the_urls_is_refused_naming_them() -> None:
    with pytest.raises(StackError, match="ALERT_SMS_WEBHOOK_URL, ALERT_WEBHOOK_URL"):
        render_config(TEMPLATE.read_text(), {})
    with pytest.raises(StackError, match="ALERT_WEBHOOK_URL must be one http"):
        render_config(TEMPLATE.read_text(), {**URLS, "ALERT_WEBHOOK_URL": "ftp://x\nreceivers: []"})


def test_the_command_line_writes_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, url in URLS.items():
        monkeypatch.setenv(name, url)
    out = tmp_path / "am.yml"
    assert main(["alertmanager-config", "--out", str(out)]) == 0
    assert amtool("check-config", out).returncode == 0
    monkeypatch.delenv("ALERT_WEBHOOK_URL")
    assert main(["alertmanager-config", "--out", str(tmp_path / "other.yml")]) == 1
    assert not (tmp_path / "other.yml").exists()

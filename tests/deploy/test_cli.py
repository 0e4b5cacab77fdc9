"""The launcher's command line, as `python -m deploy` and as the load tools run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploy import cli, topology
from loadtest import targets
from tests.conftest import ROOT


def test_command_line_deadline_and_fault_flags() -> None:
    assert cli.parse_args(["up"]).payment_deadline is None
    assert cli.parse_args(["up", "--payment-deadline", "60"]).payment_deadline == 60
    demo = cli.parse_args(["demo"])
    assert demo.payment_deadline == cli.DEMO_PAYMENT_DEADLINE == 20
    assert demo.fail_primary is False and demo.pay_share == 0.7
    assert cli.parse_args(["demo", "--fail-primary"]).fail_primary is True
    with pytest.raises(SystemExit):
        cli.parse_args(["up", "--payment-deadline", "0"])


def test_python_dash_m_deploy_status_lists_every_replica_of_the_topology() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deploy", "status"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert {replica for spec in topology.SERVICES for replica, _port in spec.replicas()} <= listed


def test_an_unknown_command_is_refused_with_the_list_of_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deploy", "launch"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "backends" in done.stderr and "demo" in done.stderr


@pytest.mark.parametrize("script", ["seed.py", "checker.py", "drills.py"])
def test_load_tools_run_by_path_from_anywhere_find_the_launcher(script: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / script), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_load_tools_take_every_replica_url_from_the_topology_shifted_by_the_offset() -> None:
    direct = targets.direct_targets(1000)
    assert direct.bases["order"] == ["http://127.0.0.1:9104", "http://127.0.0.1:9114"]
    assert direct.bases["inventory"] == ["http://127.0.0.1:9101", "http://127.0.0.1:9111"]
    assert targets.gateway_url(1000) == "http://127.0.0.1:9000"
